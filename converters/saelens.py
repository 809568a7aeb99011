"""SAELens format: `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`).

jsae's own save format. Configs of every SAELens version are read (pre-6.0 ones through
`jsae.io.normalize_saelens_cfg`, SAELens's own legacy rules). Inference checkpoints are
returned lazily (tensors read on placement); training checkpoints and legacy files that need
arithmetic (BatchTopK -> JumpReLU, `log_threshold`, a learned `scaling_factor`) go through
`jsae.io.load_saelens`, which does it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jsae.config import SAEConfig
from jsae.io import CFG_FILENAME, SPARSITY_FILENAME, WEIGHTS_FILENAME, normalize_saelens_cfg

from .base import Hints, read_json, with_hints
from .lazy import safetensors_tensors

NAME = "saelens"
DESCRIPTION = "SAELens (any version): cfg.json + sae_weights.safetensors"

# Architectures whose saved state dict is already the inference parameters.
_DIRECT = {
    "standard",
    "gated",
    "jumprelu",
    "topk",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
    "jumprelu_skip_transcoder",
}


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG_FILENAME).is_file() and (path / WEIGHTS_FILENAME).is_file()


def hub_files(path_in_repo: str) -> tuple[list[str], list[str]]:
    p = path_in_repo.strip("/")
    return [f"{p}/{CFG_FILENAME}", f"{p}/{WEIGHTS_FILENAME}"], [f"{p}/{SPARSITY_FILENAME}"]


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    """(cfg, params) of a SAELens directory; hints add registry metadata."""
    from jsae.io import load_saelens

    path = Path(path)
    cfg = normalize_saelens_cfg(dict(read_json(path / CFG_FILENAME)))
    tensors = safetensors_tensors(path / WEIGHTS_FILENAME)
    needs_arithmetic = (
        cfg.architecture not in _DIRECT or "scaling_factor" in tensors or "log_threshold" in tensors
    )
    if needs_arithmetic:
        sae = load_saelens(path)
        cfg, params = sae.cfg, {k: np.asarray(v) for k, v in sae.params.items()}
    else:
        params = dict(tensors)
    return with_hints(cfg, hints), params
