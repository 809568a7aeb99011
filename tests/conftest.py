"""Test setup: 8 fake CPU devices (sharding is tested on every run), offline hub, reference env,
and one XLA compilation cache for the whole run.

The parity tests run code from the reference environment (PyTorch + SAELens, sparsify,
dictionary_learning) in a subprocess: `make test` builds it and passes its interpreter as
JSAE_REFERENCE_PYTHON. Without it those tests fail, saying how to build it; set
JSAE_SKIP_REFERENCE=1 to skip them knowingly during a quick local loop.

Many tests compile the same programs (a tiny SAE's training step, in-process and again in the
CLI and multi-process runs they start), so the run shares JAX's persistent compilation cache:
one directory per run, shared by the xdist workers and every subprocess (through the
environment), removed at the end. Entries are keyed by the compiled program, its options and
the jax version, so a hit is the same executable a fresh compile would give.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

# set by the first process (xdist's controller); its workers and subprocesses inherit it
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"jsae-tests-xla-cache-{uuid.uuid4().hex}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import run_reference


@pytest.fixture(scope="session", autouse=True)
def machine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Per-machine caches (`jsae.architectures.grad_layout`) go to a test directory, not ~."""
    path = tmp_path_factory.mktemp("jsae-cache")
    os.environ["JSAE_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def saelens_fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SAEs of every architecture written by SAELens, with inputs and SAELens's outputs."""
    out = tmp_path_factory.mktemp("saelens") / "cases"
    run_reference("saelens_fixtures.py", "write", out)
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The run's compilation cache goes with the run: the first process (xdist's controller)
    removes it. A cache directory given in the environment is left alone."""
    cache = Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    own = cache.parent == Path(tempfile.gettempdir()) and cache.name.startswith(
        "jsae-tests-xla-cache-"
    )
    if own and not hasattr(session.config, "workerinput"):
        shutil.rmtree(cache, ignore_errors=True)


def pytest_report_header(config: pytest.Config) -> str:
    devices = f"{jax.device_count()} x {jax.devices()[0].platform}"
    return f"jax {jax.__version__}, devices: {devices}, python {sys.version.split()[0]}"
