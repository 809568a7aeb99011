"""One layer of an mntss cross-layer transcoder (CLT), read as a single-layer transcoder.

Layout (`mntss/clt-gemma-2-2b-2.5M`): per layer `W_enc_{L}.safetensors` holding
`W_enc_{L} [d_sae, d_in]`, `b_enc_{L} [d_sae]`, `b_dec_{L} [d_in]`, and
`W_dec_{L}.safetensors` holding `W_dec_{L} [d_sae, n_targets, d_in]`, the decoders of layer
L's features into every later layer; `config.yaml` names the model and hooks. A CLT feature
writes to all later layers, so no single-layer transcoder reproduces it: like SAELens, jsae
sums the decoders over the target axis, which gives the right *feature activations* (the
encoder is exact) but not a faithful reconstruction of any one layer. The summed decoder is
read a few rows at a time, never materialising the 3-D tensor.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from jsae.config import SAEConfig
from jsae.errors import FormatError

from .base import Hints, build_config, dtype_name, read_yaml, require
from .lazy import LazyTensor, safetensors_tensors

NAME = "mntss_clt"
DESCRIPTION = "mntss cross-layer transcoder, one layer: W_enc_L.safetensors + W_dec_L.safetensors"
_FILE = re.compile(r"^W_enc_(\d+)\.safetensors$")


def detect(path: Path) -> bool:
    return path.is_file() and bool(_FILE.match(path.name))


def hub_files(path_in_repo: str) -> tuple[list[str], list[str]]:
    layer = path_in_repo.strip("/")
    return [f"W_enc_{layer}.safetensors", f"W_dec_{layer}.safetensors"], ["config.yaml"]


def hub_target(path_in_repo: str) -> str:
    return f"W_enc_{path_in_repo.strip('/')}.safetensors"


def _summed(dec: LazyTensor) -> LazyTensor:
    """W_dec [d_sae, n_targets, d] summed over targets, as a lazy [d_sae, d] tensor."""
    d_sae, n_targets, d = dec.shape

    def read(index: tuple[slice, ...]) -> np.ndarray:
        block = dec.read((index[0], slice(0, n_targets), index[1]))
        return block.astype(np.float32).sum(axis=1).astype(dec.dtype)

    return LazyTensor((d_sae, d), dec.dtype, read, dec.source + ".sum(1)")


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    match = _FILE.match(path.name)
    if not match:
        raise FormatError(f"{path}: expected a file named W_enc_<layer>.safetensors.")
    layer = int(match.group(1))
    enc = safetensors_tensors(path)
    dec_path = path.parent / f"W_dec_{layer}.safetensors"
    dec = safetensors_tensors(dec_path)
    require(enc, (f"W_enc_{layer}", f"b_enc_{layer}", f"b_dec_{layer}"), path, "mntss CLT")
    require(dec, (f"W_dec_{layer}",), dec_path, "mntss CLT")
    W_dec = dec[f"W_dec_{layer}"]
    if W_dec.ndim == 3:
        W_dec = _summed(W_dec)
    params: dict[str, Any] = {
        "W_enc": enc[f"W_enc_{layer}"].T,
        "b_enc": enc[f"b_enc_{layer}"],
        "W_dec": W_dec,
        "b_dec": enc[f"b_dec_{layer}"],
    }
    architecture = "transcoder"
    if f"threshold_{layer}" in enc:
        architecture = "jumprelu_transcoder"
        params["threshold"] = np.asarray(enc[f"threshold_{layer}"], np.float32)
    config = (
        read_yaml(path.parent / "config.yaml") if (path.parent / "config.yaml").is_file() else {}
    )
    hook_in, hook_out = config.get("feature_input_hook"), config.get("feature_output_hook")
    d_in, d_sae = params["W_enc"].shape
    cfg = build_config(
        NAME,
        hints,
        architecture=architecture,
        d_in=d_in,
        d_sae=d_sae,
        d_out=W_dec.shape[1],
        dtype=dtype_name(params["W_enc"].dtype),
        apply_b_dec_to_input=False,
        metadata={
            "model_name": config.get("model_name"),
            "hook_name": f"blocks.{layer}.{hook_in}" if hook_in else None,
            "hook_name_out": f"blocks.{layer}.{hook_out}" if hook_out else None,
            "model_from_pretrained_kwargs": {"fold_ln": False},
            "clt_decoder": "summed over target layers: feature activations only",
        },
    )
    return cfg, params
