"""Which orientation a dense training step computes its two weight gradients in.

Both weight gradients of a dense SAE step are contractions over the batch: W_enc's is
`xᵀ g` ([d_in, d_sae]) and W_dec's is `fᵀ e` ([d_sae, d_out]). Either can be formed as the
other orientation's product plus a row-major copy (`jsae.sparse.transposed`), and on XLA's CPU
backend the two orientations can differ by 20-30% depending on the machine: measured at
B 4096, d 768, d_sae 16384, a `[d_sae, d]` output ran ~20% faster than `[d, d_sae]` on an Intel
Xeon and ~25% slower on an AMD EPYC (benchmarks/README.md, "Two machines"). A layout is:

* "direct": each gradient in its parameter's orientation (what autodiff does; no copy);
* "latent_rows": both as `[d_sae, d]` products, W_enc's copied into `[d_in, d_sae]`;
* "latent_columns": both as `[d, d_sae]` products, W_dec's copied into `[d_sae, d_out]`.

`choose_layout` times the orientations and copies at a run's shapes once per machine: the
choice is remembered in a small JSON file (`layout_cache_path`), so later runs on the same
machine skip the ~10-45 s timing and make the same choice, which keeps two runs of one config
bitwise equal even where two layouts time within noise of each other. The trainer keeps the
choice for the run and records it in checkpoints, so a resumed run computes (and rounds)
exactly as the uninterrupted one did. The layouts give the same gradients up to rounding.
They apply to the training encoder (`affine_encoder`) and the dense training decoder
(`Architecture.decode` with `sparse=False`); Matryoshka's banded decoder and gated's auxiliary
decode keep autodiff's orientation, and the sparse paths form their gradients by scatter-add.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jsae.fsutil import atomic_write_bytes
from jsae.sparse import transposed

LAYOUTS = ("direct", "latent_rows", "latent_columns")

# Below this many multiply-adds per weight gradient (B · d · d_sae) a GEMM takes a few
# milliseconds, timing is noise next to the step's fixed costs, and "auto" keeps "direct".
MIN_TIMED_MACS = 2**28


def encoder_weight_grad(x: jax.Array, g: jax.Array, layout: str, dtype: Any) -> jax.Array:
    """W_enc's gradient xᵀ g in `dtype`. x [N, d], g [N, n] -> [d, n]"""
    if layout == "latent_rows":
        return transposed((g.T @ x).astype(dtype))
    return (x.T @ g).astype(dtype)


def decoder_weight_grad(f: jax.Array, e: jax.Array, layout: str, dtype: Any) -> jax.Array:
    """W_dec's gradient fᵀ e in `dtype`. f [N, n], e [N, d] -> [n, d]"""
    if layout == "latent_columns":
        return transposed((e.T @ f).astype(dtype))
    return (f.T @ e).astype(dtype)


def dense_decode(f: jax.Array, W_dec: jax.Array, layout: str) -> jax.Array:
    """f @ W_dec, with W_dec's gradient formed in `layout`. [..., n] @ [n, d] -> [..., d]"""
    if layout == "latent_columns":
        return _decode_with_columns_grad(f, W_dec)
    return f @ W_dec  # autodiff forms fᵀ e in W_dec's own orientation


@jax.custom_vjp
def _decode_with_columns_grad(f: jax.Array, W_dec: jax.Array) -> jax.Array:
    return f @ W_dec


def _decode_fwd(f: jax.Array, W_dec: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    return f @ W_dec, (f, W_dec)


def _decode_bwd(residuals: tuple[jax.Array, ...], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    f, W_dec = residuals
    df = jax.lax.dot_general(g, W_dec, (((g.ndim - 1,), (1,)), ((), ())))  # g @ W_decᵀ
    f2, g2 = f.reshape(-1, f.shape[-1]), g.reshape(-1, g.shape[-1])  # [N, n], [N, d]
    return df.astype(f.dtype), decoder_weight_grad(f2, g2, "latent_columns", W_dec.dtype)


_decode_with_columns_grad.defvjp(_decode_fwd, _decode_bwd)


def _best_seconds(fn: Callable[..., jax.Array], args: tuple[jax.Array, ...], repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def time_layouts(
    rows: int, d_in: int, d_out: int, d_sae: int, dtype: Any, repeats: int = 3
) -> dict[str, float]:
    """Seconds each layout spends on the two weight gradients of a [rows]-token step on the
    default device (the fastest of `repeats` runs of each GEMM, copy included)."""
    rng = np.random.default_rng(0)

    def array(*shape: int) -> jax.Array:
        return jnp.asarray(rng.standard_normal(shape, dtype=np.float32), dtype)

    def seconds(weight_grad: Callable[..., jax.Array], *args: jax.Array, layout: str) -> float:
        grad = jax.jit(functools.partial(weight_grad, layout=layout, dtype=dtype))
        return _best_seconds(grad, args, repeats)

    g, x, e = array(rows, d_sae), array(rows, d_in), array(rows, d_out)
    enc = {lay: seconds(encoder_weight_grad, x, g, layout=lay) for lay in ("direct", "latent_rows")}
    dec = {
        lay: seconds(decoder_weight_grad, g, e, layout=lay) for lay in ("direct", "latent_columns")
    }
    return {
        "direct": enc["direct"] + dec["direct"],
        "latent_rows": enc["latent_rows"] + dec["direct"],
        "latent_columns": enc["direct"] + dec["latent_columns"],
    }


class LayoutChoice(NamedTuple):
    """What `choose_layout` decided, and where the decision came from."""

    layout: str
    times: dict[str, float] | None  # seconds per layout, when timed (now or by an earlier run)
    origin: str  # "untimed", "measured" (now), "process" (earlier here), "machine" (the cache)


# choose_layout's answers in this process: one timing per shape, however many trainers
_CHOSEN: dict[str, str] = {}
_CACHE_VERSION = 1


def layout_cache_path() -> Path | None:
    """The file that remembers each machine's timed choices: `$JSAE_CACHE_DIR`, else
    `$XDG_CACHE_HOME/jsae`, else `~/.cache/jsae`, + `weight_grad_layout.json`. None when
    `JSAE_LAYOUT_CACHE=0` (every run then times its layouts)."""
    if os.environ.get("JSAE_LAYOUT_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    base = os.environ.get("JSAE_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = os.path.join(xdg, "jsae") if xdg else os.path.join("~", ".cache", "jsae")
    return Path(base).expanduser() / "weight_grad_layout.json"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "Processor", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine_key(rows: int, d_in: int, d_out: int, d_sae: int, dtype: Any) -> str:
    """Everything a timing depends on besides load: CPU, usable cores, XLA and its flags,
    devices per process, host-memory setting, shapes and dtype."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 0
    try:
        jaxlib = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        jaxlib = "?"
    parts = {
        "cpu": _cpu_model(),
        "cores": cores,
        "jax": jax.__version__,
        "jaxlib": jaxlib,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "devices": jax.local_device_count(),
        "host_malloc": os.environ.get("JSAE_HOST_MALLOC", "1"),
        "shape": [rows, d_in, d_out, d_sae],
        "dtype": jnp.dtype(dtype).name,
    }
    return json.dumps(parts, sort_keys=True)


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries; an unreadable or foreign file counts as empty (it is only a hint)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _remember(path: Path, key: str, layout: str, times: dict[str, float]) -> None:
    """Add one choice to the cache file, atomically; one that cannot be written is skipped."""
    entries = _read_cache(path)
    entries[key] = {
        "layout": layout,
        "times": {name: round(seconds, 6) for name, seconds in times.items()},
        "timed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    data = {"version": _CACHE_VERSION, "entries": entries}
    try:
        atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    except OSError as err:  # read-only home, full disk: the run goes on, later runs time again
        print(
            f"jsae: could not keep the weight_grad_layout choice in {path} ({err}); set "
            "JSAE_CACHE_DIR to a writable directory, or JSAE_LAYOUT_CACHE=0.",
            file=sys.stderr,
        )


def choose_layout(rows: int, d_in: int, d_out: int, d_sae: int, dtype: Any) -> LayoutChoice:
    """The fastest layout at these shapes on the default device. Timed on CPU when the GEMMs
    are large enough to tell apart, once per machine and shape (`layout_cache_path`); "direct"
    untimed otherwise (GPUs' and TPUs' GEMMs take either operand transposed at no cost, so a
    copy could only add time)."""
    if jax.default_backend() != "cpu" or rows * max(d_in, d_out) * d_sae < MIN_TIMED_MACS:
        return LayoutChoice("direct", None, "untimed")
    key = _machine_key(rows, d_in, d_out, d_sae, dtype)
    if key in _CHOSEN:
        return LayoutChoice(_CHOSEN[key], None, "process")
    path = layout_cache_path()
    if path is not None:
        entry = _read_cache(path).get(key)
        if isinstance(entry, dict) and entry.get("layout") in LAYOUTS:
            _CHOSEN[key] = entry["layout"]
            times = entry.get("times")
            return LayoutChoice(
                entry["layout"], times if isinstance(times, dict) else None, "machine"
            )
    times = time_layouts(rows, d_in, d_out, d_sae, jnp.dtype(dtype))
    _CHOSEN[key] = min(times, key=times.get)
    if path is not None:
        _remember(path, key, _CHOSEN[key], times)
    return LayoutChoice(_CHOSEN[key], times, "measured")
