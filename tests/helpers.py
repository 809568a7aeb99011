"""Helpers shared by the tests: the reference-environment runner and a reporting allclose."""

from __future__ import annotations

import atexit
import json
import os
import selectors
import signal
import subprocess
import tempfile
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


def _reference_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "PYTHONPATH"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="2")
    return env


def run_reference(script: str, *args: str | Path, timeout: int = 900, fresh: bool = False) -> str:
    """Run tests/reference/<script> in the reference environment; return its stdout.

    Scripts run through one fork server per test process (tests/reference/serve.py), which
    pays the reference libraries' ~9 s import once. `fresh` (or JSAE_REFERENCE_SERVER=0)
    starts a new interpreter instead: for a script that sets environment variables before
    the imports that read them.
    """
    argv = [str(REFERENCE_SCRIPTS / script), *map(str, args)]
    with tempfile.TemporaryDirectory(prefix="jsae-reference-") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        if fresh or os.environ.get("JSAE_REFERENCE_SERVER", "1") == "0":
            with out.open("w") as stdout, err.open("w") as stderr:
                code = subprocess.run(
                    [reference_python(), *argv], stdout=stdout, stderr=stderr,
                    env=_reference_env(), timeout=timeout, cwd=REPO,
                ).returncode  # fmt: skip
        else:
            code = _SERVER.run(argv, out, err, timeout)
        stdout_text, stderr_text = out.read_text(), err.read_text()
    if code != 0:
        pytest.fail(
            f"reference script {script} {' '.join(map(str, args))} failed "
            f"(exit {code}):\n{stdout_text[-4000:]}\n{stderr_text[-8000:]}"
        )
    return stdout_text


class _ReferenceServer:
    """The reference environment's fork server (tests/reference/serve.py), started on first use
    and stopped with the test process."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.pending = b""  # reply bytes read but not yet parsed
        self.log = Path(tempfile.gettempdir()) / f"jsae-reference-server-{os.getpid()}.log"
        atexit.register(self.stop)

    def run(self, argv: list[str], stdout: Path, stderr: Path, timeout: float) -> int:
        """Run one script in a fresh fork; its exit status. A script that outlives `timeout`
        is killed, and so is the server (the next call starts another)."""
        proc = self._started()
        request = {"argv": argv, "cwd": str(REPO), "stdout": str(stdout), "stderr": str(stderr)}
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        proc.stdin.flush()
        pid = self._reply(timeout=120)["pid"]
        try:
            return self._reply(timeout)["rc"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self.stop()
            pytest.fail(f"reference script {argv[0]} ran past its {timeout} s limit")

    def _started(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            with self.log.open("w") as log:  # its own messages (imports' warnings)
                self.proc = subprocess.Popen(
                    [reference_python(), str(REFERENCE_SCRIPTS / "serve.py")],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, bufsize=0,
                    env=_reference_env(), cwd=REPO,
                )  # fmt: skip
            self.pending = b""
        return self.proc

    def _reply(self, timeout: float) -> dict:
        """The server's next reply line, waiting at most `timeout` seconds for it."""
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.pending:
                if not selector.select(timeout):
                    raise TimeoutError
                chunk = os.read(fd, 65536)
                if not chunk:  # the server died: say why
                    self.proc.wait()
                    log = self.log.read_text()[-8000:]
                    self.proc = None
                    pytest.fail(f"the reference server stopped:\n{log}")
                self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self.log.unlink(missing_ok=True)


_SERVER = _ReferenceServer()


def assert_close(actual, expected, atol: float = 1e-5, rtol: float = 1e-5, what: str = "") -> None:
    """allclose with a message that reports the worst element."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    np.testing.assert_allclose(a, e, atol=atol, rtol=rtol, err_msg=what)


def matching_rows(rows: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Index of each of `rows` among `reference`'s rows (each must match one to 1e-4): where
    shuffled activation rows came from."""
    d = ((rows[:, None, :] - reference[None, :, :]) ** 2).sum(-1)
    idx = d.argmin(1)
    assert np.sqrt(d[np.arange(len(rows)), idx]).max() < 1e-4
    return idx
