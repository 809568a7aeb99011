"""SAELens format: `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`).

jsae's own save format. Configs of every SAELens version are read (pre-6.0 ones through
`jsae.io.normalize_saelens_cfg`, SAELens's own legacy rules). Inference checkpoints are
returned lazily (tensors read on placement); training checkpoints and legacy files that need
arithmetic (BatchTopK -> JumpReLU, `log_threshold`, a learned `scaling_factor`) go through
`jsae.io.load_saelens`, which does it. A registry release's `norm_scaling_factor` (hints) is
folded into SAEs saved with `normalize_activations="expected_average_only_in"`, as SAELens's
`from_pretrained` does.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from jsae.architectures import get_architecture
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
    cfg = with_hints(cfg, hints)
    if cfg.normalize_activations == "expected_average_only_in":
        cfg, params = _fold_norm_scaling_factor(cfg, params, hints, path)
    return cfg, params


def _fold_norm_scaling_factor(
    cfg: SAEConfig, params: dict[str, Any], hints: Hints, path: Path
) -> tuple[SAEConfig, dict[str, Any]]:
    """Fold a release's dataset-norm factor in, as SAELens's `from_pretrained` does.

    An SAE trained with `expected_average_only_in` expects `s * x`; folding `s` makes it act on
    raw activations and switches the mode to "none". Without a factor (a local directory, or a
    release that lists none) the SAE is left as saved: that mode is the identity at inference,
    in SAELens as in jsae, and SAELens warns in the release case, so jsae does too.
    """
    scale = hints.norm_scaling_factor
    if scale is None:
        if hints.release is not None:
            warnings.warn(
                f"{path}: normalize_activations is 'expected_average_only_in' but release "
                f"{hints.release!r} lists no norm_scaling_factor for {hints.sae_id!r}; the SAE "
                "is loaded unfolded and expects activations already scaled.",
                stacklevel=3,
            )
        return cfg, params
    arch = get_architecture(cfg.architecture)
    host = {name: np.asarray(value) for name, value in params.items()}
    return arch.fold_activation_norm_scaling_factor(cfg, host, float(scale))
