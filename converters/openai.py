"""OpenAI sparse_autoencoder (Gao et al. 2024; GPT-2 small v1 / v4 / v5): one `.pt` per layer.

The file is `Autoencoder.state_dict()`: `pre_bias [d_in]`, `encoder.weight [d_sae, d_in]`,
`latent_bias [d_sae]`, `decoder.weight [d_in, d_sae]`, statistics buffers, and two non-tensor
entries, `"activation"` (`"TopK"` or `"ReLU"`) and `"activation_state_dict"`
(`{"k": 32, "postact_fn": "ReLU"}`). OpenAI's math (`sparse_autoencoder/model.py`):

    x, μ, σ = LN(x)   (TopK models only: x ← (x - mean) / (std + 1e-5), std unbiased)
    f = act(encoder(x - pre_bias) + latent_bias)       act = relu, or TopK then ReLU
    x̂ = (decoder(f) + pre_bias) · σ + μ

jsae: `W_enc = encoder.weightᵀ`, `b_enc = latent_bias`, `W_dec = decoder.weightᵀ`,
`b_dec = pre_bias`, `normalize_activations = "layer_norm"` for TopK models (the same
LayerNorm and its inverse), architecture `topk` or `standard`. OpenAI applies ReLU *after*
picking the top k pre-activations, which is also what jsae's `topk` does (SAELens and
sparsify take the top k of ReLU'd values instead; the results differ only when fewer than k
pre-activations are positive, where ties at zero make the selection arbitrary anyway).

Released locations map to hooks: `resid_post_mlp` -> `blocks.L.hook_resid_post`,
`resid_post_attn` -> `blocks.L.hook_resid_mid`, `resid_delta_attn` -> `blocks.L.hook_attn_out`,
`resid_delta_mlp` -> `blocks.L.hook_mlp_out`, `mlp_post_act` -> `blocks.L.mlp.hook_post`.
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

NAME = "openai"
DESCRIPTION = "OpenAI sparse_autoencoder: {layer}.pt with pre_bias / latent_bias"
_LOCATIONS = {
    "resid_post_mlp": "hook_resid_post",
    "resid_post_attn": "hook_resid_mid",
    "resid_delta_attn": "hook_attn_out",
    "resid_delta_mlp": "hook_mlp_out",
    "mlp_post_act": "mlp.hook_post",
}


def matches(state: dict[str, Any]) -> bool:
    return {"pre_bias", "latent_bias", "encoder.weight"} <= set(state)


def _location(where: str) -> tuple[str | None, int | None]:
    location = next((loc for loc in _LOCATIONS if loc in where), None)
    match = re.search(r"(?:^|/|layer_?)(\d+)\.pt$", where)
    return location, int(match.group(1)) if match else None


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    state = load_state_dict(path)
    require(state, ("pre_bias", "encoder.weight", "latent_bias"), path, "OpenAI sparse_autoencoder")
    activation = state.get("activation", "ReLU")
    act_state = state.get("activation_state_dict") or {}
    if "decoder.weight" in state:
        W_dec = state["decoder.weight"].T
    elif "decoder.linear.weight" in state:  # tied: the decoder is the encoder's transpose
        W_dec = state["decoder.linear.weight"]
    else:
        raise FormatError(f"{path} has no decoder weight (decoder.weight).")
    params = {
        "W_enc": state["encoder.weight"].T,
        "b_enc": state["latent_bias"],
        "W_dec": W_dec,
        "b_dec": state["pre_bias"],
    }
    fields: dict[str, Any]
    if activation == "TopK":
        post = act_state.get("postact_fn", "ReLU")
        if post != "ReLU":
            raise FormatError(
                f"{path}: TopK with postact_fn={post!r} is not supported (only ReLU)."
            )
        if "k" not in act_state:
            raise FormatError(f"{path}: TopK autoencoder without activation_state_dict['k'].")
        fields = {
            "architecture": "topk",
            "k": int(act_state["k"]),
            "normalize_activations": "layer_norm",
        }
    elif activation == "ReLU":
        fields = {"architecture": "standard"}
    else:
        raise FormatError(f"{path}: activation {activation!r} is not supported (TopK or ReLU).")
    d_in, d_sae = np.shape(params["W_enc"])
    where = hints.where or str(path)
    location, layer = _location(where)
    hook = f"blocks.{layer}.{_LOCATIONS[location]}" if location and layer is not None else None
    cfg = build_config(
        NAME,
        hints,
        d_in=int(d_in),
        d_sae=int(d_sae),
        dtype=dtype_name(np.asarray(params["W_enc"]).dtype),
        apply_b_dec_to_input=True,
        metadata={
            "model_name": "gpt2" if ("gpt2" in where or location) else None,
            "hook_name": hook,
            "openai_location": location,
        },
        **fields,
    )
    return cfg, params
