"""Gemma Scope (Gemma 2) SAEs and transcoders: `params.npz`.

Layout: `google/gemma-scope-{2b,9b,27b}-{pt,it}-{res,mlp,att,transcoders}` repos, folders
`layer_{L}/width_{16k..1m}/average_l0_{N}/params.npz` (and `embedding/width_4k/...` for the
2B embedding SAEs). Keys `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_in]`, `b_enc`, `b_dec`,
`threshold` (float32), already in SAELens orientation; some files spell them `w_enc`, `wenc`
or `w_e`. The published math (GDM tutorial, paper appendix A):

    f    = JumpReLU_θ(x @ W_enc + b_enc)       (x raw activations, no b_dec subtraction)
    x̂   = f @ W_dec + b_dec

Residual SAEs read `blocks.L.hook_resid_post`, MLP SAEs `blocks.L.hook_mlp_out`, attention
SAEs the concatenated head outputs `blocks.L.attn.hook_z` (d_in = n_heads * d_head), and
transcoders map `blocks.L.ln2.hook_normalized` to `blocks.L.hook_mlp_out`. The site, layer and
embedding-ness come from the repo and the folder inside it (hints from the hub); for a local
path only its Gemma Scope components count (`_local_layout`), never unrelated parent folders.

Embedding SAEs were trained on the token embeddings before Gemma multiplies them by
sqrt(d_model); `hook_embed` (TransformerLens, and jsae's models) is after that scale. So the
encoder is divided by sqrt(d_model) and the decoder *and its bias* multiplied by it. (SAELens
rescales `W_dec` but forgets `b_dec`, so its embedding-SAE reconstructions are off by
`(sqrt(d_model) - 1) * b_dec`.)
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from jsae.config import SAEConfig
from jsae.errors import FormatError

from .base import Hints, build_config, dtype_name, layer_of
from .lazy import LazyTensor, npz_tensors

NAME = "gemma_scope"
DESCRIPTION = "Gemma Scope (Gemma 2): params.npz"

_KEYS = {
    "W_enc": ("w_enc", "wenc", "w_e"),
    "W_dec": ("w_dec", "wdec", "w_d"),
    "b_enc": ("b_enc", "benc", "b_e"),
    "b_dec": ("b_dec", "bdec", "b_d"),
    "threshold": ("threshold",),
}
_MODELS = {"2b": "google/gemma-2-2b", "9b": "google/gemma-2-9b", "27b": "google/gemma-2-27b"}
_REPO = re.compile(r"gemma-scope-(2b|9b|27b)-(pt|it)-(res|mlp|att|transcoders)")
_REPO_DIR = re.compile(
    r"(?:models--google--)?(gemma-scope-(?:2b|9b|27b)-(?:pt|it)-(?:res|mlp|att|transcoders))"
)
_TAIL = (
    re.compile(r"layer_\d+|embedding"),
    re.compile(r"width_\w+"),
    re.compile(r"average_l0_\d+"),
)


def detect(path: Path) -> bool:
    if path.is_dir():
        return (path / "params.npz").is_file()
    return path.suffix == ".npz"


def hub_files(path_in_repo: str) -> tuple[list[str], list[str]]:
    return [f"{path_in_repo.strip('/')}/params.npz"], []


def _site(repo: str) -> tuple[str | None, str | None, str | None]:
    """(model id, site, variant) from a repo name: ('google/gemma-2-2b', 'res', 'pt')."""
    match = _REPO.search(repo)
    if not match:
        return None, ("transcoders" if "transcoder" in repo else None), None
    size, variant, site = match.groups()
    model = _MODELS[size] + ("-it" if variant == "it" else "")
    return model, site, variant


def _local_layout(folder: Path) -> tuple[str, str]:
    """(repo name, path inside it) that a local folder's own path shows, "" where it shows none.

    Only the components that identify a Gemma Scope layout count: a `gemma-scope-*` repo
    folder (a clone, or `models--google--gemma-scope-*` in a Hugging Face cache) and what
    follows it, else a trailing `layer_N|embedding / width_* / average_l0_N`. A parent named
    `embedding_study/` or `transcoder_notes/` changes nothing.
    """
    parts = folder.parts
    for i in range(len(parts) - 1, -1, -1):
        match = _REPO_DIR.fullmatch(parts[i])
        if match:
            inside = parts[i + 1 :]
            if len(inside) >= 2 and inside[0] == "snapshots":  # HF cache: snapshots/<commit>/
                inside = inside[2:]
            return match.group(1), "/".join(inside)
    tail = parts[-3:]
    if len(tail) == 3 and all(p.fullmatch(c) for p, c in zip(_TAIL, tail, strict=True)):
        return "", "/".join(tail)
    return "", ""


def convert(path: Path, hints: Hints) -> tuple[SAEConfig, dict[str, Any]]:
    path = Path(path)
    file = path / "params.npz" if path.is_dir() else path
    raw = npz_tensors(file)
    lowered = {k.lower(): v for k, v in raw.items()}
    params: dict[str, LazyTensor] = {}
    for name, spellings in _KEYS.items():
        found = [lowered[s] for s in spellings if s in lowered]
        if not found:
            raise FormatError(
                f"{file} is not a Gemma Scope checkpoint: no {name} (found {sorted(raw)})."
            )
        params[name] = found[0]
    if "scaling_factor" in lowered:
        scale = np.asarray(lowered["scaling_factor"], np.float32)
        if not np.allclose(scale, 1.0):
            W_dec = np.asarray(params["W_dec"], np.float32) * scale.reshape(-1, 1)
            params["W_dec"] = W_dec  # type: ignore[assignment]
    d_in, d_sae = params["W_enc"].shape
    d_out = params["W_dec"].shape[1]

    if hints.repo_id or hints.path_in_repo:  # from the hub: the repo and the folder in it
        repo, inside = hints.repo_id or "", hints.path_in_repo or ""
    else:
        repo, inside = _local_layout(file.parent)
    model, site, _ = _site(repo)
    layer = layer_of(inside, r"layer_(\d+)")
    embedding = "embedding" in inside
    if embedding:
        factor = math.sqrt(d_in)
        params["W_enc"] = params["W_enc"].map(lambda a: (a / factor).astype(a.dtype))
        params["W_dec"] = _scaled(params["W_dec"], factor)
        params["b_dec"] = _scaled(params["b_dec"], factor)

    hook = hook_out = hf_in = hf_out = None
    architecture, reshape, extra = "jumprelu", "none", {}
    if site == "transcoders":
        architecture = "jumprelu_transcoder"
        extra["d_out"] = d_out
        if layer is not None:
            hook, hook_out = f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
            hf_in = f"model.layers.{layer}.pre_feedforward_layernorm"
            hf_out = f"model.layers.{layer}.post_feedforward_layernorm"
    elif site == "res":
        hook = (
            "hook_embed"
            if embedding
            else (f"blocks.{layer}.hook_resid_post" if layer is not None else None)
        )
    elif site == "mlp" and layer is not None:
        hook = f"blocks.{layer}.hook_mlp_out"
    elif site == "att":
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
            "model_name": model,
            "hook_name": hook,
            "hook_name_out": hook_out,
            "hf_hook_name": hf_in,
            "hf_hook_name_out": hf_out,
            "context_size": 1024,
            "prepend_bos": True,
            "dataset_path": "monology/pile-uncopyrighted",
        },
        **extra,
    )
    return cfg, params


def _scaled(value: Any, factor: float) -> Any:
    if isinstance(value, LazyTensor):
        return value.map(lambda a: (a * factor).astype(a.dtype))
    return np.asarray(value) * factor
