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

from jsae.config import SAEConfig

from .base import Hints, linear_pair_sae
from .torch_pickle import load_state_dict

NAME = "goodfire"
DESCRIPTION = "Goodfire: .pt/.pth with encoder_linear / decoder_linear"


def matches(state: dict[str, Any]) -> bool:
    return "encoder_linear.weight" in state


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    match = re.search(r"(Llama-[\w.-]+?)-SAE-l(\d+)", hints.where or path.name)
    metadata = {
        "model_name": f"meta-llama/{match.group(1)}" if match else None,
        "hook_name": f"blocks.{match.group(2)}.hook_resid_post" if match else None,
        "dataset_path": "lmsys/lmsys-chat-1m" if match else None,
    }
    return linear_pair_sae(
        NAME,
        hints,
        load_state_dict(path),
        path,
        encoder="encoder_linear",
        decoder="decoder_linear",
        what="Goodfire",
        metadata=metadata,
    )
