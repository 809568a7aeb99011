"""Converters from foreign SAE checkpoint formats to jsae `(SAEConfig, params)`.

Installed as `jsae.converters`. Each module handles one format and is the only code that
knows its key names; every one returns parameters in SAELens names and orientation
(`W_enc [d_in, d_sae]`, `W_dec [d_sae, d_out]`, ...) with the config's metadata filled in
from the files, the path and the registry.

    cfg, params = jsae.converters.convert("path/to/ae_folder")    # format detected
    fmt = jsae.converters.detect_format("layer_3.safetensors")    # "circuit_tracer"

`.pt` files are read by `torch_pickle` (no torch, no code execution); `params` values are
numpy arrays or `lazy.LazyTensor`s that `jsae.load` / `jsae.from_pretrained` place on devices
chunk by chunk.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from jsae.config import SAEConfig
from jsae.errors import ConfigError, FormatError, choices_hint

from . import (
    circuit_tracer,
    connor_rob_hook_z,
    dictionary_learning,
    gemma_scope,
    gemma_scope_2,
    goodfire,
    linear_pt,
    llama_scope,
    llama_scope_r1,
    mntss_clt,
    openai,
    qwen_scope,
    saelens,
    sparsify,
)
from .base import Hints
from .torch_pickle import describe_pt

FORMATS: dict[str, ModuleType] = {
    m.NAME: m
    for m in (
        saelens,
        gemma_scope,
        gemma_scope_2,
        llama_scope,
        llama_scope_r1,
        sparsify,
        dictionary_learning,
        openai,
        goodfire,
        circuit_tracer,
        mntss_clt,
        qwen_scope,
        linear_pt,
        connor_rob_hook_z,
    )
}

# Formats SAELens lists releases for that jsae does not convert, and why.
UNSUPPORTED: dict[str, str] = {
    "temporal": "temporal SAEs (canrager/temporalSAEs) run attention layers inside the SAE; "
    "jsae has no such architecture.",
}

# SAELens `conversion_func` names (pretrained_saes.yaml) -> jsae format names.
SAELENS_LOADERS: dict[str | None, str] = {
    None: "saelens",
    "sae_lens": "saelens",
    "gemma_2": "gemma_scope",
    "gemma_2_transcoder": "gemma_scope",
    "gemma_3": "gemma_scope_2",
    "llama_scope": "llama_scope",
    "llama_scope_r1_distill": "llama_scope_r1",
    "dictionary_learning_1": "dictionary_learning",
    "sparsify": "sparsify",
    "goodfire": "goodfire",
    "mwhanna_transcoder": "circuit_tracer",
    "mntss_clt_layer_transcoder": "mntss_clt",
    "qwen_scope": "qwen_scope",
    "deepseek_r1": "linear_pt",
    "connor_rob_hook_z": "connor_rob_hook_z",
    "temporal": "temporal",
}

# Directory layouts: the files that identify each, most specific first.
DIR_LAYOUTS: tuple[tuple[str, frozenset[str]], ...] = (
    ("saelens", frozenset({"cfg.json", "sae_weights.safetensors"})),
    ("sparsify", frozenset({"cfg.json", "sae.safetensors"})),
    ("llama_scope", frozenset({"hyperparams.json", "checkpoints/final.safetensors"})),
    ("llama_scope_r1", frozenset({"config.json", "sae_weights.safetensors"})),
    ("gemma_scope_2", frozenset({"params.safetensors"})),
    ("gemma_scope", frozenset({"params.npz"})),
    ("dictionary_learning", frozenset({"ae.pt"})),
)
# With files missing, the file that still says which format was meant.
_SIGNATURES = (
    ("sparsify", "sae.safetensors"),
    ("llama_scope", "hyperparams.json"),
    ("saelens", "cfg.json"),
    ("saelens", "sae_weights.safetensors"),
    ("dictionary_learning", "ae.pt"),
)


def format_from_names(names: set[str] | frozenset[str]) -> str | None:
    """The format of a folder holding `names` (paths relative to it), or None."""
    for fmt, required in DIR_LAYOUTS:
        if required <= names:
            return fmt
    return None


_PARENT_FILES = {
    "cfg.json",
    "sae_weights.safetensors",
    "sparsity.safetensors",
    "sae.safetensors",
    "hyperparams.json",
    "config.json",
}


def format_names() -> list[str]:
    """Every format jsae converts."""
    return sorted(FORMATS)


def get_format(name: str) -> ModuleType:
    """The converter module for a format name, or a ConfigError naming the valid ones."""
    if name in FORMATS:
        return FORMATS[name]
    if name in UNSUPPORTED:
        raise FormatError(f"format {name!r} is not supported: {UNSUPPORTED[name]}")
    raise ConfigError(
        f"unknown checkpoint format {name!r}; jsae converts {format_names()}."
        + choices_hint(name, FORMATS)
    )


def hub_files(module: ModuleType, path_in_repo: str) -> tuple[list[str], list[str]]:
    """(required, optional) files of one SAE in a hub repo: the module's, else the file itself."""
    if hasattr(module, "hub_files"):
        return module.hub_files(path_in_repo)
    return [path_in_repo.strip("/")], []


def hub_target(module: ModuleType, path_in_repo: str) -> str:
    """What to convert once a hub SAE's files are fetched: the module's, else the path itself."""
    if hasattr(module, "hub_target"):
        return module.hub_target(path_in_repo)
    return path_in_repo.strip("/")


def _pt_format(path: Path) -> str:
    """Format of a .pt/.pth file, from its keys (read without loading any tensor data)."""
    if connor_rob_hook_z.detect(path):
        return connor_rob_hook_z.NAME
    if qwen_scope.detect(path):
        return qwen_scope.NAME
    state = describe_pt(path)
    if not isinstance(state, dict):
        raise FormatError(f"{path} holds a {type(state).__name__}, not a dict of tensors.")
    if "ae" in state and isinstance(state["ae"], dict):
        state = state["ae"]
    for module in (goodfire, openai):
        if module.matches(state):
            return module.NAME
    if path.name == "ae.pt" or dictionary_learning.infer_dict_class(state) in (
        "AutoEncoder",
        "GatedAutoEncoder",
        "JumpReluAutoEncoder",
        "MatryoshkaBatchTopKSAE",
    ):
        return dictionary_learning.NAME
    if linear_pt.matches(state):
        return linear_pt.NAME
    raise FormatError(
        f"{path}: a torch checkpoint with keys {sorted(state)[:12]} matches no known SAE "
        f"format ({format_names()}); pass format= if you know which it is."
    )


def detect_format(path: str | Path) -> str:
    """The format of a local checkpoint directory or file, from the files and keys present."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path} does not exist: it is not a directory or file jsae can read.")
    if path.is_dir():
        names = {str(p.relative_to(path)) for p in path.glob("*")}
        names |= {f"checkpoints/{p.name}" for p in path.glob("checkpoints/*")}
        fmt = format_from_names(names)
        if fmt is None:  # an incomplete folder: let its converter name the missing file
            fmt = next((f for f, sig in _SIGNATURES if sig in names), None)
        if fmt is not None:
            return fmt
        raise FormatError(
            f"{path} holds no SAE checkpoint jsae recognises (found {sorted(names)[:20]}). "
            "Expected one of: "
            + "; ".join(FORMATS[f].DESCRIPTION for f, _ in DIR_LAYOUTS)
            + ". For single-file formats (.pt, layer_N.safetensors) pass the file itself."
        )
    if path.name in _PARENT_FILES:
        return detect_format(path.parent)
    if path.name == "final.safetensors" and path.parent.name == "checkpoints":
        return detect_format(path.parent.parent)
    for module in (gemma_scope, gemma_scope_2, dictionary_learning, mntss_clt):
        if module.detect(path):
            return module.NAME
    if path.suffix == ".safetensors":
        if circuit_tracer.detect(path):
            return circuit_tracer.NAME
        raise FormatError(
            f"{path}: a safetensors file that is neither a circuit-tracer transcoder "
            "(W_enc [d_sae, d_in], ...) nor part of a known folder layout; pass its folder."
        )
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return _pt_format(path)
    raise FormatError(
        f"{path}: unrecognised file type {path.suffix!r}; jsae reads {format_names()}."
    )


def convert(
    path: str | Path, format: str | None = None, hints: Hints | None = None
) -> tuple[SAEConfig, dict[str, Any]]:
    """(SAEConfig, params) for a local checkpoint; the format is detected unless given."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path} does not exist: it is not a directory or file jsae can read.")
    fmt = format or detect_format(path)
    module = get_format(fmt)
    if path.is_file() and path.name in _PARENT_FILES:
        path = path.parent
    elif path.name == "final.safetensors" and path.parent.name == "checkpoints":
        path = path.parent.parent
    return module.convert(path, hints or Hints())


__all__ = [
    "DIR_LAYOUTS",
    "FORMATS",
    "SAELENS_LOADERS",
    "UNSUPPORTED",
    "Hints",
    "convert",
    "detect_format",
    "format_from_names",
    "format_names",
    "get_format",
]
