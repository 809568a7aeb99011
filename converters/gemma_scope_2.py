"""Gemma Scope 2 (Gemma 3) SAEs and transcoders: `params.safetensors` + `config.json`.

Layout: `google/gemma-scope-2-{270m,1b,4b,12b,27b}-{pt,it}` repos with folders
`{resid_post,attn_out,mlp_out,transcoder}[_all]/layer_{L}_width_{16k..1m}_l0_{small,medium,big}[_affine]/`.
Keys `w_enc [d_in, d_sae]`, `w_dec [d_sae, d_out]`, `b_enc`, `b_dec`, `threshold`, and for
affine transcoders `affine_skip_connection [d_in, d_out]`. `config.json` has
`architecture: "jump_relu"`, `model_name`, `hf_hook_point_in` / `hf_hook_point_out`,
`affine_connection`. The math:

    f   = JumpReLU_θ(x @ w_enc + b_enc)
    out = f @ w_dec + b_dec  (+ x @ affine_skip_connection)

jsae keeps the skip matrix as `W_skip = affine_skip_connectionᵀ` ([d_out, d_in], applied as
`x @ W_skipᵀ`). Hooks: `resid_post` -> `blocks.L.hook_resid_post`, `mlp_out` ->
`blocks.L.hook_mlp_out` (after the post-MLP norm), `attn_out` -> `blocks.L.attn.hook_z` (the
input of `o_proj`), transcoders `blocks.L.ln2.hook_normalized` -> `blocks.L.hook_mlp_out`
(the Hugging Face points are `pre_feedforward_layernorm.output` ->
`post_feedforward_layernorm.output`; SAELens labels the input `hook_mlp_in`, which in
TransformerLens is the un-normalised residual, so jsae uses the normalised hook).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from jsae.config import SAEConfig
from jsae.errors import FormatError

from .base import Hints, build_config, dtype_name, read_json, require
from .lazy import safetensors_tensors

NAME = "gemma_scope_2"
DESCRIPTION = "Gemma Scope 2 (Gemma 3): params.safetensors + config.json"

_SITE_DIR = re.compile(r"(?:resid_post|attn_out|mlp_out|transcoder|clt)(?:_all)?")
_SAE_DIR = re.compile(r"layer_\d+_width_\w+")


def detect(path: Path) -> bool:
    if path.is_dir():
        return (path / "params.safetensors").is_file()
    return path.name == "params.safetensors"


def hub_files(path_in_repo: str) -> tuple[list[str], list[str]]:
    p = path_in_repo.strip("/")
    return [f"{p}/params.safetensors"], [f"{p}/config.json"]


def _local_layout(folder: Path) -> str:
    """`site/layer_L_width_...` of a local folder laid out as in the repos, else its own name
    if that is a `layer_L_width_...` folder, else "": a parent named `transcoder_notes/` or
    `attn_out_study/` is not a site and changes nothing."""
    if not _SAE_DIR.fullmatch(folder.name):
        return ""
    site = folder.parent.name
    return f"{site}/{folder.name}" if _SITE_DIR.fullmatch(site) else folder.name


def _model_name(raw: dict[str, Any], hints: Hints) -> str | None:
    if hints.model_name:
        return hints.model_name
    name = raw.get("model_name")
    if name:
        name = name if "/" in name else "google/" + name
        name = name.replace("-v3", "-3")
        return name.replace("-pt", "") if "270m" in name else name
    if hints.repo_id and "gemma-scope-2" in hints.repo_id:
        return hints.repo_id.replace("gemma-scope-2", "gemma-3")
    return None


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    tensors = {k.lower(): v for k, v in safetensors_tensors(folder / "params.safetensors").items()}
    require(tensors, ("w_enc", "w_dec", "b_enc", "b_dec", "threshold"), folder, "Gemma Scope 2")
    raw = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if raw.get("architecture", "jump_relu") != "jump_relu":
        raise FormatError(
            f"{folder}/config.json declares architecture {raw['architecture']!r}; Gemma Scope 2 "
            "checkpoints are 'jump_relu'."
        )
    params = {
        "W_enc": tensors["w_enc"],
        "W_dec": tensors["w_dec"],
        "b_enc": tensors["b_enc"],
        "b_dec": tensors["b_dec"],
        "threshold": tensors["threshold"],
    }
    d_in, d_sae = params["W_enc"].shape
    d_out = params["W_dec"].shape[1]
    if raw.get("affine_connection") and "affine_skip_connection" not in tensors:
        raise FormatError(
            f"{folder}: config says affine_connection but the skip matrix is missing."
        )

    # the folder inside the repo, as SAELens reads it; a local path counts only from the site
    where = hints.path_in_repo or _local_layout(folder)
    match = re.search(r"layer_(\d+)", where)
    layer = int(match.group(1)) if match else None
    site = next(
        (s for s in ("transcoder", "clt", "resid_post", "attn_out", "mlp_out") if s in where), None
    )
    transcoder = (
        site in ("transcoder", "clt") or "affine_skip_connection" in tensors or d_out != d_in
    )
    extra: dict[str, Any] = {}
    reshape, hook, hook_out = "none", None, None
    if transcoder:
        architecture = "jumprelu_transcoder"
        extra["d_out"] = d_out
        if "affine_skip_connection" in tensors:
            architecture = "jumprelu_skip_transcoder"
            params["W_skip"] = tensors["affine_skip_connection"].T
        if layer is not None:
            hook, hook_out = f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
    else:
        architecture = "jumprelu"
        if layer is not None and site == "resid_post":
            hook = f"blocks.{layer}.hook_resid_post"
        elif layer is not None and site == "mlp_out":
            hook = f"blocks.{layer}.hook_mlp_out"
        elif site == "attn_out":
            reshape = "hook_z"
            hook = f"blocks.{layer}.attn.hook_z" if layer is not None else None
    cfg = build_config(
        NAME,
        hints,
        architecture=architecture,
        d_in=d_in,
        d_sae=d_sae,
        dtype=dtype_name(params["W_enc"].dtype),
        apply_b_dec_to_input=False,
        reshape_activations=reshape,
        metadata={
            "model_name": _model_name(raw, hints),
            "hook_name": hook,
            "hook_name_out": hook_out,
            "hf_hook_name": raw.get("hf_hook_point_in"),
            "hf_hook_name_out": raw.get("hf_hook_point_out"),
            "prepend_bos": True,
        },
        **extra,
    )
    return cfg, params
