"""Llama Scope R1-distill and later OpenMOSS SAEs: `config.json` + `sae_weights.safetensors`.

Layout: `fnlp/Llama-Scope-R1-Distill`, folders like `800M-Slimpajama-0-OpenR1-Math-220k/L{L}R/`.
Same keys as Llama Scope plus a learned per-latent `log_jumprelu_threshold [d_sae]`
(`θ_i = exp(log_jumprelu_threshold_i)`); the dataset norms are in `config.json`, in
`dataset_average_activation_norm.<hook>` tensors of the weights file, or (for registry
releases) in the release's `norm_scaling_factor`. The math and its folding are those of
`llama_scope` (`fold_openmoss`): dataset-wise input scale, decoder norm inside the threshold
comparison when `sparsity_include_decoder_norm` (OpenMOSS's default, true), output scaled
back by `1 / s_out`.

Told apart from a SAELens directory by its `config.json` (SAELens writes `cfg.json`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jsae.config import SAEConfig
from jsae.errors import FormatError

from .base import Hints, as_float, read_json, require
from .lazy import safetensors_tensors
from .llama_scope import _config, fold_openmoss, norm_factors

NAME = "llama_scope_r1"
DESCRIPTION = "Llama Scope R1-distill / OpenMOSS: config.json + sae_weights.safetensors"
_NORM_PREFIX = "dataset_average_activation_norm."


def detect(path: Path) -> bool:
    return (
        path.is_dir()
        and (path / "config.json").is_file()
        and (path / "sae_weights.safetensors").is_file()
        and not (path / "cfg.json").is_file()
    )


def hub_files(path_in_repo: str) -> tuple[list[str], list[str]]:
    p = path_in_repo.strip("/")
    return [f"{p}/config.json", f"{p}/sae_weights.safetensors"], []


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    hp = dict(read_json(path / "config.json"))
    weights = path / "sae_weights.safetensors"
    tensors = safetensors_tensors(weights)
    require(tensors, ("encoder.weight", "encoder.bias", "decoder.weight"), weights, "OpenMOSS")
    d_sae, d_in = tensors["encoder.weight"].shape
    d_model = int(hp.get("d_model", d_in))
    expected = hp.get("d_sae") or (
        d_model * hp["expansion_factor"] if hp.get("expansion_factor") else d_sae
    )
    if int(expected) != d_sae:
        raise FormatError(f"{path}: config says d_sae={expected} but the weights have {d_sae}.")
    # Dataset norms saved next to the weights (newer OpenMOSS checkpoints).
    stored = {
        k[len(_NORM_PREFIX) :]: float(np.asarray(v))
        for k, v in tensors.items()
        if k.startswith(_NORM_PREFIX)
    }
    if stored and not hp.get("dataset_average_activation_norm"):
        hook_in = hp.get("hook_point_in")
        hook_out = hp.get("hook_point_out", hook_in)
        if hook_in in stored:
            hp["dataset_average_activation_norm"] = {
                "in": stored[hook_in],
                "out": stored.get(hook_out, stored[hook_in]),
            }
    s_in, s_out = norm_factors(hp, d_model, path / "config.json", hints.norm_scaling_factor)
    if "log_jumprelu_threshold" in tensors:
        threshold = np.exp(np.asarray(tensors["log_jumprelu_threshold"], np.float32))
    elif "jump_relu_threshold" in hp:
        threshold = as_float(hp["jump_relu_threshold"], "jump_relu_threshold", path)
    else:
        raise FormatError(f"{path} has neither log_jumprelu_threshold nor jump_relu_threshold.")
    params = fold_openmoss(
        encoder_weight=tensors["encoder.weight"],
        encoder_bias=tensors["encoder.bias"],
        decoder_weight=tensors["decoder.weight"],
        decoder_bias=tensors.get("decoder.bias") if hp.get("use_decoder_bias", True) else None,
        threshold=threshold,
        s_in=s_in,
        s_out=s_out,
        include_decoder_norm=bool(hp.get("sparsity_include_decoder_norm", True)),
        subtract_decoder_bias=bool(hp.get("apply_decoder_bias_to_pre_encoder", False)),
    )
    return _config(NAME, hp, tensors["encoder.weight"].dtype, params, hints, s_in, s_out), params
