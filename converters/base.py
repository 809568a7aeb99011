"""What every converter shares: the hints a caller passes, metadata assembly, key checks.

A converter module exposes

    NAME: str                       format name ("gemma_scope", ...)
    DESCRIPTION: str                one line for docs and error messages
    convert(path, hints) -> (SAEConfig, params)       params in SAELens names/orientation

and, where the defaults in `jsae.converters` (`hub_files`, `hub_target`) do not fit,
    hub_files(path_in_repo) -> (required, optional)   files to fetch from a hub repo
                                                      (default: the single file itself)
    hub_target(path_in_repo) -> str                   what to pass to convert() afterwards
                                                      (default: the path itself)
    detect(path) -> bool            (single-file formats recognised by name) is path mine?
    matches(state) -> bool          (.pt formats recognised by keys) is this state dict mine?

`params` values are numpy arrays or `LazyTensor`s (read on placement).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from jsae.config import SAEConfig, SAEMetadata
from jsae.errors import FormatError
from jsae.io import read_json

# TransformerLens / SAELens model names -> Hugging Face hub ids, so that
# `jsae.load_model(sae.cfg.metadata.model_name)` works for every registry release.
HF_MODEL_IDS: dict[str, str] = {
    "gpt2-small": "gpt2",
    "gpt2": "gpt2",
    "gemma-2-2b": "google/gemma-2-2b",
    "gemma-2-2b-it": "google/gemma-2-2b-it",
    "gemma-2-9b": "google/gemma-2-9b",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
    "gemma-2-27b": "google/gemma-2-27b",
    "gemma-2-27b-it": "google/gemma-2-27b-it",
    "gemma-2b": "google/gemma-2b",
    "gemma-2b-it": "google/gemma-2b-it",
    "pythia-70m-deduped": "EleutherAI/pythia-70m-deduped",
    "pythia-70m": "EleutherAI/pythia-70m",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "qwen3-14b": "Qwen/Qwen3-14B",
    "tiny-stories-1L-21M": "roneneldan/TinyStories-1Layer-21M",
    "Meta-Llama-3-8B-Instruct": "meta-llama/Meta-Llama-3-8B-Instruct",
}


def hf_model_id(name: str | None) -> str | None:
    """The Hugging Face hub id for a model name (unchanged when it already is one)."""
    if name is None:
        return None
    return HF_MODEL_IDS.get(name, name)


@dataclass(frozen=True)
class Hints:
    """What the caller knows beyond the files: where they came from and registry facts."""

    repo_id: str | None = None  # Hugging Face repo the files came from
    path_in_repo: str | None = None  # folder or file inside it
    revision: str | None = None  # commit hash actually loaded
    release: str | None = None  # registry release name
    sae_id: str | None = None  # id within the release
    model_name: str | None = None  # the release's model
    neuronpedia_id: str | None = None
    norm_scaling_factor: float | None = None  # dataset-norm scale to fold (Llama Scope R1...)
    config_overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """Repo path, for names and messages ("" when unknown)."""
        return "/".join(p for p in (self.repo_id, self.path_in_repo) if p)


# ---------------------------------------------------------------------------------- reading


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping file, with errors naming the file."""
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise FormatError(f"{path} is not valid YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path} must hold a YAML mapping.")
    return data


def require(state: Mapping[str, Any], keys: Iterable[str], source: Any, what: str = "") -> None:
    """FormatError naming the missing keys and the ones present."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise FormatError(
            f"{source} is not a {what or 'supported'} checkpoint: it lacks {missing} "
            f"(found {sorted(state)[:20]})."
        )


def layer_of(text: str | None, pattern: str = r"layer[s]?[._]?(\d+)") -> int | None:
    """The first layer number in a name like 'layer_12/width_16k' or 'layers.5'."""
    if not text:
        return None
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None


def as_float(value: Any, what: str, source: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FormatError(f"{source}: {what} must be a number, got {value!r}.")
    return float(value)


# ---------------------------------------------------------------------------------- building


# SAEConfig fields a registry's config_overrides may set; everything else is metadata.
_CFG_OVERRIDES = ("normalize_activations",)


def build_config(fmt: str, hints: Hints, *, metadata: Mapping[str, Any], **cfg: Any) -> SAEConfig:
    """An SAEConfig from a converter's fields and metadata, with the caller's hints applied."""
    meta = {k: v for k, v in metadata.items() if v is not None}
    if meta.get("model_name"):
        meta["model_name"] = hf_model_id(meta["model_name"])
    elif hints.model_name:
        meta["model_name"] = hf_model_id(hints.model_name)
    meta["source_format"] = fmt
    return with_hints(SAEConfig(metadata=SAEMetadata.from_dict(meta), **cfg), hints)


def with_hints(cfg: SAEConfig, hints: Hints) -> SAEConfig:
    """Apply the registry's config overrides and Neuronpedia id, and record where it came from.

    Empty hints change nothing, so a local SAELens directory loads exactly as written.
    """
    meta = cfg.metadata.to_dict()
    fields: dict[str, Any] = {}
    overrides = dict(hints.config_overrides or {})
    for key in _CFG_OVERRIDES:
        if key in overrides:
            fields[key] = overrides.pop(key)
    for key, value in overrides.items():
        meta[key] = hf_model_id(value) if key == "model_name" else value
    if hints.neuronpedia_id:
        meta["neuronpedia_id"] = hints.neuronpedia_id
    for key, value in (
        ("source_repo_id", hints.repo_id),
        ("source_path", hints.path_in_repo),
        ("source_revision", hints.revision),
        ("release", hints.release),
        ("sae_id", hints.sae_id),
    ):
        if value is not None:
            meta[key] = value
    if meta == cfg.metadata.to_dict() and not fields:
        return cfg
    return cfg.replace(metadata=SAEMetadata.from_dict(meta), **fields)


def dtype_name(dtype: Any) -> str:
    """jsae dtype name of a numpy/ml_dtypes dtype (float32 for float64 and non-floats)."""
    name = np.dtype(dtype).name
    return name if name in ("float32", "float16", "bfloat16") else "float32"


def linear_pair_sae(
    fmt: str,
    hints: Hints,
    state: Mapping[str, Any],
    source: Any,
    *,
    encoder: str,
    decoder: str,
    what: str,
    metadata: Mapping[str, Any],
) -> tuple[SAEConfig, dict[str, Any]]:
    """A ReLU SAE stored as two torch `nn.Linear`s, `{encoder}.*` and `{decoder}.*`.

    `f = relu(x @ encoder.weightᵀ + encoder.bias)`, `x̂ = f @ decoder.weightᵀ + decoder.bias`:
    a `standard` SAE without b_dec subtraction, both weights transposed to SAELens orientation.
    """
    keys = tuple(f"{layer}.{part}" for layer in (encoder, decoder) for part in ("weight", "bias"))
    require(state, keys, source, what)
    params = {
        "W_enc": state[f"{encoder}.weight"].T,
        "b_enc": state[f"{encoder}.bias"],
        "W_dec": state[f"{decoder}.weight"].T,
        "b_dec": state[f"{decoder}.bias"],
    }
    d_in, d_sae = np.shape(params["W_enc"])
    cfg = build_config(
        fmt,
        hints,
        architecture="standard",
        d_in=int(d_in),
        d_sae=int(d_sae),
        dtype=dtype_name(np.asarray(params["W_enc"]).dtype),
        apply_b_dec_to_input=False,
        metadata=metadata,
    )
    return cfg, params


__all__ = [
    "HF_MODEL_IDS",
    "Hints",
    "as_float",
    "build_config",
    "dtype_name",
    "hf_model_id",
    "layer_of",
    "read_json",
    "read_yaml",
    "require",
    "with_hints",
]
