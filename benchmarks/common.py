"""Shared benchmark plumbing: machine description, timing, the reference-environment runner."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


def machine() -> str:
    """One line naming the machine: CPU model, cores, memory, JAX backend, and whether glibc
    keeps freed host memory for reuse (`jsae.host_memory`)."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    from jsae import host_memory

    dev = jax.devices()[0]
    backend = f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}) x{jax.device_count()}"
    malloc = "reused" if host_memory.applied else "glibc defaults"
    return f"{cpu}, {os.cpu_count()} cores{mem}; {backend}; host memory: {malloc}"


def time_each(fn: Callable[[], object], *, warmup: int = 1, reps: int = 5) -> list[float]:
    """Wall time of each of `reps` calls of fn() (fn must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def time_it(fn: Callable[[], object], *, warmup: int = 1, reps: int = 5) -> float:
    """Median wall time of fn() in seconds."""
    return statistics.median(time_each(fn, warmup=warmup, reps=reps))


def reference_python() -> str:
    path = os.environ.get("JSAE_REFERENCE_PYTHON") or str(REPO / ".venv-ref" / "bin" / "python")
    if not Path(path).exists():
        raise SystemExit(
            f"reference environment not found at {path}: "
            "run `make refenv` or set JSAE_REFERENCE_PYTHON"
        )
    return path


class ReferenceWorker:
    """A long-lived reference-environment process answering timing requests over stdin/stdout.

    Benchmarks alternate rounds between jsae and the reference (A/B/A/B...), so both see the
    same machine load; the worker script reads one JSON request per line and prints one JSON
    reply per line.
    """

    def __init__(self, script: str, *args: object):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
        env["HF_HUB_OFFLINE"] = "1"
        self.proc = subprocess.Popen(
            [reference_python(), str(REFERENCE_DIR / script), *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.info = self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"reference worker died:\n{self.proc.stderr.read()}")
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)

    def request(self, **kwargs: object) -> dict:
        self.proc.stdin.write(json.dumps(kwargs) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def run_reference(script: str, *args: object) -> dict:
    """Run benchmarks/reference/<script> in the reference env; it prints one JSON object last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [reference_python(), str(REFERENCE_DIR / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
