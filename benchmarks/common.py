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
    """One line naming the machine: CPU model, cores, memory, JAX backend."""
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
    dev = jax.devices()[0]
    backend = f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}) x{jax.device_count()}"
    return f"{cpu}, {os.cpu_count()} cores{mem}; {backend}"


def time_it(fn: Callable[[], object], *, warmup: int = 1, reps: int = 5) -> float:
    """Median wall time of fn() in seconds (fn must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reference_python() -> str:
    path = os.environ.get("JSAE_REFERENCE_PYTHON") or str(REPO / ".venv-ref" / "bin" / "python")
    if not Path(path).exists():
        raise SystemExit(
            f"reference environment not found at {path}: "
            "run `make refenv` or set JSAE_REFERENCE_PYTHON"
        )
    return path


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
