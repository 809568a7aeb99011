"""Goodfire SAEs (Llama-3.1-8B-Instruct layer 19, Llama-3.3-70B-Instruct layer 50): one .pt/.pth.

A plain state dict: `encoder_linear.weight [d_sae, d_in]`, `encoder_linear.bias [d_sae]`,
`decoder_linear.weight [d_in, d_sae]`, `decoder_linear.bias [d_in]`. Goodfire's math:

    f = relu(x @ encoder_linear.weightᵀ + encoder_linear.bias)      (no b_dec subtraction)
    x̂ = f @ decoder_linear.weightᵀ + decoder_linear.bias

jsae: `standard` with `apply_b_dec_to_input=False`, both weights transposed. The file name
(`Llama-3.1-8B-Instruct-SAE-l19.pth`) gives the model and the residual-stream layer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from jsae.config import SAEConfig

from .base import Hints, build_config, dtype_name, require
from .torch_pickle import load_state_dict

NAME = "goodfire"
DESCRIPTION = "Goodfire: .pt/.pth with encoder_linear / decoder_linear"
KEYS = (
    "encoder_linear.weight",
    "encoder_linear.bias",
    "decoder_linear.weight",
    "decoder_linear.bias",
)


def matches(state: dict[str, Any]) -> bool:
    return "encoder_linear.weight" in state


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    state = load_state_dict(path)
    require(state, KEYS, path, "Goodfire")
    params = {
        "W_enc": state["encoder_linear.weight"].T,
        "b_enc": state["encoder_linear.bias"],
        "W_dec": state["decoder_linear.weight"].T,
        "b_dec": state["decoder_linear.bias"],
    }
    d_in, d_sae = np.shape(params["W_enc"])
    match = re.search(r"(Llama-[\w.-]+?)-SAE-l(\d+)", hints.where or path.name)
    model = f"meta-llama/{match.group(1)}" if match else None
    hook = f"blocks.{match.group(2)}.hook_resid_post" if match else None
    cfg = build_config(
        NAME,
        hints,
        architecture="standard",
        d_in=int(d_in),
        d_sae=int(d_sae),
        dtype=dtype_name(np.asarray(params["W_enc"]).dtype),
        apply_b_dec_to_input=False,
        metadata={
            "model_name": model,
            "hook_name": hook,
            "dataset_path": "lmsys/lmsys-chat-1m" if match else None,
        },
    )
    return cfg, params
