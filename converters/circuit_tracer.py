"""circuit-tracer per-layer transcoders (and the mwhanna Qwen3 releases): `layer_{L}.safetensors`.

Keys `W_enc [d_sae, d_in]` (note: transposed relative to SAELens), `W_dec [d_sae, d_out]`,
`b_enc [d_sae]`, `b_dec [d_out]`, optionally `W_skip [d_out, d_in]` and
`activation_function.threshold [d_sae]` (JumpReLU; ReLU without it). circuit-tracer's math
(`SingleLayerTranscoder`):

    f   = act(x @ W_encᵀ + b_enc)        act = relu, or z · 1[z > θ]
    out = f @ W_dec + b_dec + x @ W_skipᵀ

jsae: `W_enc` transposed, the rest as stored; architecture `transcoder`, `skip_transcoder`,
`jumprelu_transcoder` or `jumprelu_skip_transcoder`. (jsae's JumpReLU also applies relu, which
differs only for negative thresholds; a warning says so if a file has any.) TopK transcoders
(a stored `k`) have no jsae architecture yet and are refused. A `config.yaml` next to the
file (circuit-tracer's transcoder-set config: `model_name`, `feature_input_hook`,
`feature_output_hook`) supplies the model and the hooks.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from jsae.config import SAEConfig
from jsae.errors import FormatError

from .base import Hints, build_config, dtype_name, read_yaml, require
from .lazy import safetensors_tensors

NAME = "circuit_tracer"
DESCRIPTION = "circuit-tracer / mwhanna transcoders: layer_N.safetensors"
THRESHOLD_KEY = "activation_function.threshold"


def matches(tensors: dict[str, Any]) -> bool:
    """W_enc stored [d_sae, d_in]: its first axis matches b_enc."""
    if not {"W_enc", "W_dec", "b_enc", "b_dec"} <= set(tensors):
        return False
    return tensors["W_enc"].shape[:1] == tensors["b_enc"].shape[:1]


def detect(path: Path) -> bool:
    if path.is_file() and path.suffix == ".safetensors" and path.name != "sae_weights.safetensors":
        try:
            return matches(safetensors_tensors(path))
        except FormatError:
            return False
    return False


def hub_files(path_in_repo: str) -> tuple[list[str], list[str]]:
    p = path_in_repo.strip("/")
    parent = p.rsplit("/", 1)[0] + "/" if "/" in p else ""
    return [p], [f"{parent}config.yaml", f"{parent}wandb-config.yaml", f"{parent}wanb-config.yaml"]


def _hooks(folder: Path, layer: int | None) -> tuple[str | None, str | None, str | None, dict]:
    """(model, hook_in, hook_out, extra metadata) from a circuit-tracer / mwhanna config."""
    config = read_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else {}
    model = config.get("model_name")
    hook_in = config.get("feature_input_hook", "mlp.hook_in")
    hook_out = config.get("feature_output_hook", "hook_mlp_out")
    extra: dict[str, Any] = {"model_from_pretrained_kwargs": {"fold_ln": False}}
    if layer is None:
        return model, None, None, extra
    return model, f"blocks.{layer}.{hook_in}", f"blocks.{layer}.{hook_out}", extra


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    tensors = safetensors_tensors(path)
    require(tensors, ("W_enc", "W_dec", "b_enc", "b_dec"), path, "circuit-tracer transcoder")
    if "k" in tensors:
        raise FormatError(f"{path}: TopK transcoders are not supported yet (a 'k' is stored).")
    if not matches(tensors):
        raise FormatError(
            f"{path}: W_enc {tensors['W_enc'].shape} is not [d_sae, d_in], circuit-tracer's "
            "orientation."
        )
    params: dict[str, Any] = {
        "W_enc": tensors["W_enc"].T,
        "W_dec": tensors["W_dec"],
        "b_enc": tensors["b_enc"],
        "b_dec": tensors["b_dec"],
    }
    jump = THRESHOLD_KEY in tensors
    if jump:
        threshold = np.asarray(tensors[THRESHOLD_KEY], np.float32)
        if np.any(threshold < 0):
            warnings.warn(
                f"{path}: negative JumpReLU thresholds; circuit-tracer lets negative "
                "pre-activations above them through, jsae (like SAELens) zeroes them.",
                stacklevel=2,
            )
        params["threshold"] = threshold
    skip = "W_skip" in tensors
    if skip:
        params["W_skip"] = tensors["W_skip"]
    architecture = ("jumprelu_" if jump else "") + ("skip_transcoder" if skip else "transcoder")
    d_in, d_sae = params["W_enc"].shape
    layer_match = re.search(r"layer_?(\d+)", path.name)
    layer = int(layer_match.group(1)) if layer_match else None
    model, hook_in, hook_out, extra = _hooks(path.parent, layer)
    cfg = build_config(
        NAME,
        hints,
        architecture=architecture,
        d_in=d_in,
        d_sae=d_sae,
        d_out=params["W_dec"].shape[1],
        dtype=dtype_name(params["W_enc"].dtype),
        apply_b_dec_to_input=False,
        metadata={"model_name": model, "hook_name": hook_in, "hook_name_out": hook_out, **extra},
    )
    return cfg, params
