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

from jsae.config import SAEConfig

from .base import Hints, linear_pair_sae
from .torch_pickle import load_state_dict

NAME = "linear_pt"
DESCRIPTION = "ReLU SAE as nn.Linear encoder/decoder state dict (.pt), e.g. qresearch DeepSeek-R1"
KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")


def matches(state: dict[str, Any]) -> bool:
    """Exactly the two Linear layers' tensors (values may be arrays or TensorInfo)."""
    return set(KEYS) == {k for k, v in state.items() if hasattr(v, "shape")}


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    deepseek = re.search(r"DeepSeek-R1-Distill-Llama-8B-SAE-l(\d+)", hints.where or path.name)
    metadata = {
        "model_name": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B" if deepseek else None,
        "hook_name": f"blocks.{deepseek.group(1)}.hook_resid_post" if deepseek else None,
        "context_size": 1024 if deepseek else None,
        "dataset_path": "lmsys/lmsys-chat-1m" if deepseek else None,
    }
    return linear_pair_sae(
        NAME,
        hints,
        load_state_dict(path),
        path,
        encoder="encoder",
        decoder="decoder",
        what="nn.Linear SAE",
        metadata=metadata,
    )
