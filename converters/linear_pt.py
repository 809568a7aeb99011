"""ReLU SAEs saved as a torch state dict of two `nn.Linear`s: `encoder.*`, `decoder.*`.

Keys `encoder.weight [d_sae, d_in]`, `encoder.bias`, `decoder.weight [d_in, d_sae]`,
`decoder.bias` and nothing else. The math is `f = relu(encoder(x))`, `x̂ = decoder(f)`: a
`standard` SAE without b_dec subtraction. Used by qresearch's DeepSeek-R1-Distill-Llama-8B
SAE (`DeepSeek-R1-Distill-Llama-8B-SAE-l19.pt`, residual stream after layer 19).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from jsae.config import SAEConfig

from .base import Hints, build_config, dtype_name, require
from .torch_pickle import load_state_dict

NAME = "linear_pt"
DESCRIPTION = "ReLU SAE as nn.Linear encoder/decoder state dict (.pt), e.g. qresearch DeepSeek-R1"
KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")


def matches(state: dict[str, Any]) -> bool:
    """Exactly the two Linear layers' tensors (values may be arrays or TensorInfo)."""
    return set(KEYS) == {k for k, v in state.items() if hasattr(v, "shape")}


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    state = load_state_dict(path)
    require(state, KEYS, path, "nn.Linear SAE")
    params = {
        "W_enc": state["encoder.weight"].T,
        "b_enc": state["encoder.bias"],
        "W_dec": state["decoder.weight"].T,
        "b_dec": state["decoder.bias"],
    }
    d_in, d_sae = np.shape(params["W_enc"])
    deepseek = re.search(r"DeepSeek-R1-Distill-Llama-8B-SAE-l(\d+)", hints.where or path.name)
    cfg = build_config(
        NAME,
        hints,
        architecture="standard",
        d_in=int(d_in),
        d_sae=int(d_sae),
        dtype=dtype_name(np.asarray(params["W_enc"]).dtype),
        apply_b_dec_to_input=False,
        metadata={
            "model_name": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B" if deepseek else None,
            "hook_name": f"blocks.{deepseek.group(1)}.hook_resid_post" if deepseek else None,
            "context_size": 1024 if deepseek else None,
            "dataset_path": "lmsys/lmsys-chat-1m" if deepseek else None,
        },
    )
    return cfg, params
