"""Shared by the model tests: the PyTorch reference models, written once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import run_reference

_WRITTEN: dict[str, Path] = {}


def torch_reference_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of tests/reference/torch_models.py cases (model/ + expected.npz per case)."""
    if "root" not in _WRITTEN:
        root = tmp_path_factory.mktemp("torch_models")
        run_reference("torch_models.py", "write", root)
        _WRITTEN["root"] = root
    return _WRITTEN["root"]


def expected(root: Path, case: str) -> dict[str, np.ndarray]:
    with np.load(root / case / "expected.npz") as data:
        return dict(data)
