"""Keep freed host memory for reuse, so XLA's CPU backend does not page-fault its way through
every step.

XLA's CPU backend allocates each execution's temporaries with `malloc` (over a GB for a
d_sae 16384 training step). glibc serves allocations that large with fresh `mmap`s and unmaps
them on `free`, so every step the kernel maps and zero-fills each 4 KiB page again on first
touch: ~300k page faults and ~0.4 s of system time per standard step on 2 cores. Configured
with one arena, no `mmap` and a high trim threshold (`mallopt`), glibc keeps freed memory in
its heap and hands it out again: no faults once the heap has settled (a step or two), and
training steps on CPU run faster (benchmarks/README.md).

This changes the whole process's allocator, so it applies only where it pays off: glibc on
Linux, JAX on CPU (no accelerator plugin installed, or `JAX_PLATFORMS=cpu`). It must run before
XLA starts its threads (their arenas are fixed at their first allocation), so `import jsae`
applies it; a process that ran JAX computations before importing jsae keeps glibc's defaults.
`JSAE_HOST_MALLOC=0` turns it off, `=1` forces it on. The cost: freed memory up to 2 GiB at
the top of the heap stays with the process instead of going back to the OS.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes: keep up to 2 GiB of free heap
# (parameter, value): one arena for every thread, never mmap, trim only beyond TRIM_THRESHOLD
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))

applied = False  # whether this process's allocator was configured


def accelerator_expected() -> bool:
    """Whether JAX will probably run on an accelerator: JAX_PLATFORMS names one, or (unset)
    a GPU/TPU plugin or libtpu is installed. Decided without initialising JAX's backends."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return any(p.strip() not in ("", "cpu") for p in platforms.split(","))
    if importlib.util.find_spec("libtpu") is not None:
        return True
    try:
        plugins = importlib.metadata.entry_points(group="jax_plugins")
    except Exception:  # broken package metadata must not break `import jsae`
        return False
    return len(plugins) > 0 or importlib.util.find_spec("jax_plugins") is not None


def keep_freed_memory(force: bool = False) -> bool:
    """Configure glibc's malloc to reuse freed memory (see the module docstring).

    Returns whether it was applied: glibc only, and unless `force`, only when JAX is expected
    to run on CPU and `JSAE_HOST_MALLOC` is not "0".
    """
    global applied
    setting = os.environ.get("JSAE_HOST_MALLOC", "").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return False
    if not (force or setting in ("1", "on", "true", "yes")) and accelerator_expected():
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
    applied = applied or ok
    return ok


__all__ = ["SETTINGS", "accelerator_expected", "keep_freed_memory"]
