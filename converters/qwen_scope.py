"""Qwen Scope TopK SAEs (`Qwen/SAE-Res-{model}-W{N}K-L0_{K}`): `layer{L}.sae.pt` per layer.

Each file is a dict `W_enc [d_sae, d_in]`, `W_dec [d_in, d_sae]`, `b_enc [d_sae]`,
`b_dec [d_in]`; k is the `L0_{K}` of the repo name. Loaded, as SAELens does, as a `topk` SAE
on `blocks.L.hook_resid_post` without b_dec subtraction. The orientation of each matrix is
decided from the bias lengths, so a transposed file loads too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from jsae.config import SAEConfig
from jsae.errors import FormatError

from .base import Hints, build_config, dtype_name, require
from .torch_pickle import load_state_dict

NAME = "qwen_scope"
DESCRIPTION = "Qwen Scope: layer{L}.sae.pt (TopK)"
_REPO = re.compile(r"SAE-Res-(.+?)-W(\d+)K-L0_(\d+)")


def detect(path: Path) -> bool:
    return path.is_file() and bool(re.fullmatch(r"layer\d+\.sae\.pt", path.name))


def _oriented(matrix: Any, rows: int, cols: int, name: str, source: Any) -> Any:
    shape = np.shape(matrix)
    if shape == (rows, cols):
        return matrix
    if shape == (cols, rows):
        return matrix.T
    raise FormatError(
        f"{source}: {name} has shape {shape}, expected ({rows}, {cols}) or its transpose."
    )


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    state = load_state_dict(path)
    require(state, ("W_enc", "W_dec", "b_enc", "b_dec"), path, "Qwen Scope")
    d_sae, d_in = len(state["b_enc"]), len(state["b_dec"])
    params = {
        "W_enc": _oriented(state["W_enc"], d_in, d_sae, "W_enc", path),
        "b_enc": state["b_enc"],
        "W_dec": _oriented(state["W_dec"], d_sae, d_in, "W_dec", path),
        "b_dec": state["b_dec"],
    }
    where = hints.where or str(path)
    match = _REPO.search(where)
    if match is None:
        raise FormatError(
            f"{path}: cannot tell k; Qwen Scope files are read from their repo "
            "(Qwen/SAE-Res-<model>-W<N>K-L0_<k>), whose name carries it."
        )
    model, k = f"Qwen/{match.group(1)}", int(match.group(3))
    layer = re.search(r"layer(\d+)\.sae\.pt", path.name)
    cfg = build_config(
        NAME,
        hints,
        architecture="topk",
        k=k,
        d_in=d_in,
        d_sae=d_sae,
        dtype=dtype_name(np.asarray(params["W_enc"]).dtype),
        apply_b_dec_to_input=False,
        metadata={
            "model_name": hints.model_name or model,
            "hook_name": f"blocks.{layer.group(1)}.hook_resid_post" if layer else None,
            "hf_hook_name": f"model.layers.{layer.group(1)}" if layer else None,
            "context_size": 1024,
            "prepend_bos": True,
        },
    )
    return cfg, params
