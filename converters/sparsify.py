"""EleutherAI sparsify: `<hookpoint>/cfg.json` + `<hookpoint>/sae.safetensors`.

Keys `encoder.weight [d_sae, d_in]`, `encoder.bias`, `W_dec [d_sae, d_in]`, `b_dec [d_in]`
(dtype as stored: float32 from the trainer, bfloat16 in some hub releases). sparsify's math:

    f = TopK(relu((x - b_dec) @ encoder.weightᵀ + encoder.bias))
    x̂ = f @ W_dec + b_dec

which is jsae's `topk` with `W_enc = encoder.weightᵀ` and `W_dec` taken *as is*: sparsify's
`W_dec` is already `[d_sae, d_in]`, SAELens's orientation. (SAELens's sparsify loader
transposes it anyway, producing a `[d_in, d_sae]` decoder, and also sets
`apply_b_dec_to_input = not normalize_decoder`, although sparsify always subtracts `b_dec`
from SAE inputs; jsae does neither.)

Transcoders (`transcode`), skip connections and the `groupmax` activation have no jsae
architecture yet and are refused with a clear error. The run's `config.json` one folder up
gives the model, dataset and context length; the folder name is the hook point
(`layers.N` -> `blocks.N.hook_resid_post`, `layers.N.mlp` -> `hook_mlp_out`,
`layers.N.self_attn` -> `hook_attn_out`, `embed_tokens` -> `hook_embed`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from jsae.config import SAEConfig
from jsae.errors import FormatError

from .base import Hints, build_config, dtype_name, read_json, require
from .lazy import safetensors_tensors

NAME = "sparsify"
DESCRIPTION = "EleutherAI sparsify: cfg.json + sae.safetensors"


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "cfg.json").is_file() and (path / "sae.safetensors").is_file()


def hub_files(path_in_repo: str) -> tuple[list[str], list[str]]:
    p = path_in_repo.strip("/")
    parent = p.rsplit("/", 1)[0] + "/" if "/" in p else ""
    return [f"{p}/cfg.json", f"{p}/sae.safetensors"], [f"{parent}config.json"]


def hook_name(hookpoint: str) -> str | None:
    """TransformerLens hook for a sparsify hookpoint (a Hugging Face module path)."""
    if hookpoint.endswith("embed_tokens") or hookpoint.endswith("embed_in"):
        return "hook_embed"
    match = re.search(r"layers[._](\d+)(?:[._](\w+))?$", hookpoint)
    if not match:
        return None
    layer, sub = match.group(1), match.group(2)
    if sub is None:
        return f"blocks.{layer}.hook_resid_post"
    if sub.startswith("mlp"):
        return f"blocks.{layer}.hook_mlp_out"
    if "attn" in sub or "attention" in sub:
        return f"blocks.{layer}.hook_attn_out"
    return None


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    raw = read_json(path / "cfg.json")
    tensors = safetensors_tensors(path / "sae.safetensors")
    for flag, why in (
        ("transcode", "sparsify transcoders (TopK transcoders have no jsae architecture yet)"),
        ("skip_connection", "skip connections on TopK SAEs"),
        ("signed", "signed activations"),
    ):
        if raw.get(flag):
            raise FormatError(f"{path}: {why} are not supported ({flag}=true in cfg.json).")
    if "W_skip" in tensors:
        raise FormatError(
            f"{path}: skip connections on TopK SAEs are not supported (W_skip present)."
        )
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise FormatError(f"{path}: activation={activation!r} is not supported (only 'topk').")
    enc_key = "encoder.weight" if "encoder.weight" in tensors else "W_enc"
    require(tensors, (enc_key, "b_dec"), path / "sae.safetensors", "sparsify")
    W_enc = tensors["encoder.weight"].T if enc_key == "encoder.weight" else tensors["W_enc"]
    d_in, d_sae = W_enc.shape
    if "W_dec" in tensors:
        W_dec = tensors["W_dec"]  # already [d_sae, d_in]
    elif "decoder.weight" in tensors:
        W_dec = tensors["decoder.weight"].T  # an nn.Linear decoder is [d_in, d_sae]
    else:
        raise FormatError(
            f"{path}/sae.safetensors has no decoder (W_dec); was it saved with decoder=False?"
        )
    expected = raw.get("num_latents") or d_in * raw.get("expansion_factor", 0)
    if int(raw.get("d_in", d_in)) != d_in or (expected and int(expected) != d_sae):
        raise FormatError(
            f"{path}: cfg.json (d_in={raw.get('d_in')}, latents={expected}) does not match "
            f"the weights ({d_in}, {d_sae})."
        )
    b_enc = tensors.get("encoder.bias", tensors.get("b_enc"))
    if b_enc is None:
        import numpy as np

        b_enc = np.zeros(d_sae, W_enc.dtype)
    params = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": tensors["b_dec"]}
    run_cfg_path = path.parent / "config.json"
    run = read_json(run_cfg_path) if run_cfg_path.is_file() else {}
    hookpoint = hints.path_in_repo.rsplit("/", 1)[-1] if hints.path_in_repo else path.name
    cfg = build_config(
        NAME,
        hints,
        architecture="topk",
        d_in=d_in,
        d_sae=d_sae,
        k=int(raw.get("k", 32)),
        dtype=dtype_name(W_enc.dtype),
        apply_b_dec_to_input=True,
        metadata={
            "model_name": run.get("model"),
            "hook_name": hook_name(hookpoint),
            "hf_hook_name": hookpoint,
            "dataset_path": run.get("dataset"),
            "context_size": run.get("ctx_len"),
        },
    )
    return cfg, params
