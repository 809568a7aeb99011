"""Helpers shared by the tests: the reference-environment runner and a reporting allclose."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE_SCRIPTS = Path(__file__).resolve().parent / "reference"


def reference_python() -> str:
    """Interpreter of the reference environment, or a pytest failure that says how to get one."""
    if os.environ.get("JSAE_SKIP_REFERENCE") == "1":
        pytest.skip("JSAE_SKIP_REFERENCE=1: parity tests against the reference environment skipped")
    path = os.environ.get("JSAE_REFERENCE_PYTHON") or str(REPO / ".venv-ref" / "bin" / "python")
    if not Path(path).exists():
        pytest.fail(
            f"reference environment not found at {path}: run `make refenv` (or `make test`, "
            "which builds it), or point JSAE_REFERENCE_PYTHON at an interpreter with torch and "
            "sae-lens installed."
        )
    return path


def run_reference(script: str, *args: str | Path, timeout: int = 900) -> str:
    """Run tests/reference/<script> in the reference environment; return its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "PYTHONPATH"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [reference_python(), str(REFERENCE_SCRIPTS / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"reference script {script} {' '.join(map(str, args))} failed "
            f"(exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc.stdout


def assert_close(actual, expected, atol: float = 1e-5, rtol: float = 1e-5, what: str = "") -> None:
    """allclose with a message that reports the worst element."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    np.testing.assert_allclose(a, e, atol=atol, rtol=rtol, err_msg=what)
