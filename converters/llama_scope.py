"""Llama Scope (OpenMOSS, Llama-3.1-8B): `hyperparams.json` + `checkpoints/final.safetensors`.

Layout: `fnlp/Llama3_1-8B-Base-LX{R,A,M,TC}-{8x,32x}` repos, folders
`Llama3_1-8B-Base-L{L}{R,A,M,TC}-{8x,32x}/`. Keys `encoder.weight [d_sae, d_in]`,
`encoder.bias`, `decoder.weight [d_out, d_sae]`, `decoder.bias` (bfloat16). The published
math (OpenMOSS Language-Model-SAEs), with `s_in = sqrt(d_model) / avg_norm_in` and
`s_out = sqrt(d_model) / avg_norm_out` from `dataset_average_activation_norm`:

    h = (s_in · x) @ encoder.weightᵀ + encoder.bias               # hidden_pre
    score_i = h_i · ‖decoder.weight[:, i]‖   if sparsity_include_decoder_norm else h_i
    f_i = h_i · 1[score_i > θ]                                     # θ = jump_relu_threshold
    out = (f @ decoder.weightᵀ + decoder.bias) / s_out

jsae folds all of it into a plain JumpReLU on raw activations with the same latents `f`:
`W_enc = s_in · encoder.weightᵀ`, `W_dec = decoder.weightᵀ / s_out`, `b_dec = decoder.bias /
s_out`, and a per-latent threshold `θ_i = θ / ‖decoder.weight[:, i]‖` (the decoder norm
inside the comparison becomes part of the threshold). SAELens instead uses one scalar
threshold `θ · s_in` for every latent and one scale for input and output, which is wrong
whenever decoder norms differ from 1, and wrong for transcoders, whose input and output norms
differ (LXTC outputs come out ~20x too large).

Transcoders (`hook_point_in != hook_point_out`) load as `jumprelu_transcoder`. The R1-distill
series has its own format (`llama_scope_r1`) and shares `fold_openmoss` below.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jsae.config import SAEConfig
from jsae.errors import FormatError

from .base import Hints, as_float, build_config, dtype_name, read_json, require
from .lazy import LazyTensor, safetensors_tensors

NAME = "llama_scope"
DESCRIPTION = "Llama Scope (OpenMOSS): hyperparams.json + checkpoints/final.safetensors"
DEFAULT_MODEL = "meta-llama/Llama-3.1-8B"


def detect(path: Path) -> bool:
    return (
        path.is_dir()
        and (path / "hyperparams.json").is_file()
        and (
            (path / "checkpoints" / "final.safetensors").is_file()
            or (path / "final.safetensors").is_file()
        )
    )


def hub_files(path_in_repo: str) -> tuple[list[str], list[str]]:
    p = path_in_repo.strip("/")
    return [f"{p}/hyperparams.json", f"{p}/checkpoints/final.safetensors"], []


def decoder_column_norms(decoder_weight: Any, rows_per_read: int = 512) -> np.ndarray:
    """‖decoder.weight[:, i]‖ for a [d_out, d_sae] tensor, reading a few rows at a time. [d_sae]"""
    if not isinstance(decoder_weight, LazyTensor):
        w = np.asarray(decoder_weight, np.float32)
        return np.sqrt(np.sum(w * w, axis=0))
    d_out, d_sae = decoder_weight.shape
    total = np.zeros(d_sae, np.float64)
    for start in range(0, d_out, rows_per_read):
        block = decoder_weight.read(
            (slice(start, min(start + rows_per_read, d_out)), slice(0, d_sae))
        )
        block = block.astype(np.float32)
        total += np.sum(block * block, axis=0, dtype=np.float64)
    return np.sqrt(total).astype(np.float32)


def norm_factors(
    hp: Mapping[str, Any], d_model: int, source: Any, fallback: float | None
) -> tuple[float, float]:
    """(s_in, s_out): the dataset-wise input scale and the output de-normalisation scale."""
    mode = hp.get("norm_activation", "dataset-wise")
    if mode == "inference":
        return 1.0, 1.0
    if mode != "dataset-wise":
        raise FormatError(
            f"{source}: norm_activation={mode!r} is not supported (jsae reads 'dataset-wise' "
            "and 'inference' OpenMOSS checkpoints)."
        )
    norms = hp.get("dataset_average_activation_norm")
    if isinstance(norms, Mapping) and norms.get("in") is not None:
        avg_in = as_float(norms["in"], "dataset_average_activation_norm.in", source)
        avg_out = as_float(
            norms.get("out", norms["in"]), "dataset_average_activation_norm.out", source
        )
        return math.sqrt(d_model) / avg_in, math.sqrt(d_model) / avg_out
    if fallback is not None:
        return float(fallback), float(fallback)
    raise FormatError(
        f"{source} was trained on dataset-normalised activations but records no "
        "dataset_average_activation_norm; pass norm_scaling_factor=sqrt(d_model)/avg_norm "
        "(jsae.from_pretrained supplies it for registry releases)."
    )


def fold_openmoss(
    *,
    encoder_weight: Any,  # [d_sae, d_in]
    encoder_bias: Any,  # [d_sae]
    decoder_weight: Any,  # [d_out, d_sae]
    decoder_bias: Any | None,  # [d_out]
    threshold: Any,  # scalar or [d_sae]
    s_in: float,
    s_out: float,
    include_decoder_norm: bool,
    subtract_decoder_bias: bool = False,
) -> dict[str, Any]:
    """SAELens-orientation JumpReLU params acting on raw activations (see the module docstring)."""
    d_sae = encoder_weight.shape[0]
    d_out = decoder_weight.shape[0]
    f32 = np.float32
    # Folded values stay float32; the SAE's dtype (by default the file's) rounds them once.
    W_enc = encoder_weight.T.map(lambda a: a.astype(f32) * f32(s_in), dtype=f32)
    W_dec = decoder_weight.T.map(lambda a: a.astype(f32) / f32(s_out), dtype=f32)
    b_enc = np.asarray(encoder_bias, f32)
    b_dec_raw = np.zeros(d_out, f32) if decoder_bias is None else np.asarray(decoder_bias, f32)
    if subtract_decoder_bias:
        # h = (s_in x - b_D) W_Eᵀ + b_E  ->  fold  -b_D W_Eᵀ  into the encoder bias
        b_enc = b_enc - np.asarray(encoder_weight, f32) @ b_dec_raw
    theta = np.broadcast_to(np.asarray(threshold, f32), (d_sae,)).astype(f32)
    if include_decoder_norm:
        norms = decoder_column_norms(decoder_weight)
        with np.errstate(divide="ignore"):
            theta = np.where(norms > 0, theta / norms, np.finfo(f32).max).astype(f32)
    return {
        "W_enc": W_enc,
        "b_enc": b_enc,
        "W_dec": W_dec,
        "b_dec": b_dec_raw / f32(s_out),
        "threshold": theta,
    }


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    hp = read_json(path / "hyperparams.json")
    weights = path / "checkpoints" / "final.safetensors"
    if not weights.is_file():
        weights = path / "final.safetensors"
    tensors = safetensors_tensors(weights)
    require(tensors, ("encoder.weight", "encoder.bias", "decoder.weight"), weights, "Llama Scope")
    act = str(hp.get("act_fn", "jumprelu")).lower()
    if act not in ("jumprelu", "relu"):
        raise FormatError(f"{path}: act_fn={act!r} is not supported (jumprelu or relu).")
    d_in = tensors["encoder.weight"].shape[1]
    d_model = int(hp.get("d_model", d_in))
    s_in, s_out = norm_factors(hp, d_model, path / "hyperparams.json", hints.norm_scaling_factor)
    if hints.norm_scaling_factor and abs(s_in / hints.norm_scaling_factor - 1) > 1e-3:
        warnings.warn(
            f"{path}: hyperparams.json gives an input scale of {s_in:.6g}, the registry "
            f"{hints.norm_scaling_factor:.6g}; using the checkpoint's own.",
            stacklevel=2,
        )
    threshold = (
        as_float(hp.get("jump_relu_threshold", 0.0), "jump_relu_threshold", path)
        if act == "jumprelu"
        else 0.0
    )
    params = fold_openmoss(
        encoder_weight=tensors["encoder.weight"],
        encoder_bias=tensors["encoder.bias"],
        decoder_weight=tensors["decoder.weight"],
        decoder_bias=tensors.get("decoder.bias") if hp.get("use_decoder_bias", True) else None,
        threshold=threshold,
        s_in=s_in,
        s_out=s_out,
        include_decoder_norm=bool(hp.get("sparsity_include_decoder_norm", True))
        and act == "jumprelu",
        subtract_decoder_bias=bool(hp.get("apply_decoder_bias_to_pre_encoder", False)),
    )
    return _config(NAME, hp, tensors["encoder.weight"].dtype, params, hints, s_in, s_out), params


def _config(
    fmt: str,
    hp: Mapping[str, Any],
    dtype: Any,
    params: dict,
    hints: Hints,
    s_in: float,
    s_out: float,
) -> SAEConfig:
    hook_in = hp.get("hook_point_in")
    hook_out = hp.get("hook_point_out", hook_in)
    transcoder = hook_out != hook_in
    d_in, d_sae = params["W_enc"].shape
    d_out = params["W_dec"].shape[1]
    extra = {"d_out": d_out} if transcoder else {}
    return build_config(
        fmt,
        hints,
        architecture="jumprelu_transcoder" if transcoder else "jumprelu",
        d_in=d_in,
        d_sae=d_sae,
        dtype=dtype_name(dtype),
        apply_b_dec_to_input=False,
        metadata={
            "model_name": hints.model_name or DEFAULT_MODEL,
            "hook_name": hook_in,
            "hook_name_out": hook_out if transcoder else None,
            "context_size": 1024,
            "prepend_bos": True,
            "dataset_path": "cerebras/SlimPajama-627B",
            "norm_scaling_factor_in": s_in,
            "norm_scaling_factor_out": s_out,
        },
        **extra,
    )
