"""SAELens-format save and load: `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`).

What `save` writes, SAELens 6.x loads with `SAE.load_from_disk`; what SAELens writes (6.x, and
the pre-6.0 configs of older releases), `load_saelens` reads. Writes are atomic.

cfg.json records `metadata.sae_lens_version = "6.0.0"` unless a newer SAELens version is
already known: SAELens reads configs without a version >= 6 through its legacy converter, so
the field declares which schema the file follows. `metadata.jsae_version` says who wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from jsae.architectures import get_architecture
from jsae.config import SAEConfig, SAEMetadata, canonical_dtype
from jsae.errors import FormatError, NonFiniteError
from jsae.fsutil import atomic_output_dir

if TYPE_CHECKING:
    from jsae.sae import SAE

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
SAELENS_FORMAT_VERSION = "6.0.0"
JSAE_VERSION = "0.1.0"

# Keys SAELens < 6 kept at the top level of cfg.json that belong in metadata now.
_LEGACY_METADATA_KEYS = (
    "model_name",
    "hook_name",
    "model_class_name",
    "hook_head_index",
    "model_from_pretrained_kwargs",
    "prepend_bos",
    "exclude_special_tokens",
    "neuronpedia_id",
    "context_size",
    "seqpos_slice",
    "dataset_path",
    "sae_lens_version",
    "sae_lens_training_version",
    "hook_name_out",
    "hook_head_index_out",
    "hf_hook_name",
    "hf_hook_name_out",
)


def _major(version: Any) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


# ---------------------------------------------------------------------------- config


def _legacy_to_v6(cfg: dict[str, Any]) -> dict[str, Any]:
    """Convert a pre-6.0 SAELens config to the 6.x layout (SAELens's own rules)."""
    renames = {
        "hook_point": "hook_name",
        "hook_point_head_index": "hook_head_index",
        "activation_fn_str": "activation_fn",
    }
    cfg = {renames.get(k, k): v for k, v in cfg.items()}
    cfg.setdefault("prepend_bos", True)
    cfg.setdefault("apply_b_dec_to_input", True)
    cfg.setdefault("architecture", "standard")
    if "d_sae" not in cfg and "d_in" in cfg and cfg.get("expansion_factor"):
        cfg["d_sae"] = int(cfg["d_in"] * cfg["expansion_factor"])
    cfg.setdefault(
        "reshape_activations", "hook_z" if "hook_z" in str(cfg.get("hook_name", "")) else "none"
    )
    act_kwargs = cfg.get("activation_fn_kwargs") or {}
    if cfg.get("activation_fn") == "topk" and act_kwargs.get("k") is not None:
        cfg["architecture"] = "topk"
        cfg["k"] = act_kwargs["k"]
    norm = cfg.get("normalize_activations")
    if isinstance(norm, bool):
        cfg["normalize_activations"] = "expected_average_only_in" if norm else "none"
    elif norm is None:
        cfg["normalize_activations"] = "none"
    metadata = dict(cfg.get("metadata") or {})
    for key in _LEGACY_METADATA_KEYS:
        if key in cfg and key not in metadata:
            metadata[key] = cfg[key]
    cfg["metadata"] = metadata
    return cfg


def normalize_saelens_cfg(data: dict[str, Any]) -> SAEConfig:
    """An `SAEConfig` from a SAELens cfg.json dict of any version."""
    version = data.get("sae_lens_version") or (data.get("metadata") or {}).get("sae_lens_version")
    legacy = _major(version) < 6
    if legacy:
        data = _legacy_to_v6(data)
    for key in ("d_in", "d_sae"):
        if key not in data:
            raise FormatError(f"cfg.json has no {key!r}; cannot tell the SAE's shape.")
    arch = get_architecture(data.get("architecture", "standard"))
    metadata = dict(data.get("metadata") or {})
    if legacy:
        # Read through the legacy converter: the version it claimed is not a 6.x schema.
        metadata.pop("sae_lens_version", None)
        if version:
            metadata["legacy_sae_lens_version"] = version
    return SAEConfig(
        architecture=arch.name,
        d_in=int(data["d_in"]),
        d_sae=int(data["d_sae"]),
        dtype=canonical_dtype(data.get("dtype") or "float32"),
        apply_b_dec_to_input=data.get("apply_b_dec_to_input"),
        normalize_activations=data.get("normalize_activations") or "none",
        reshape_activations=data.get("reshape_activations") or "none",
        metadata=SAEMetadata.from_dict(metadata),
        **arch.cfg_fields_from_dict(data),
    )


def saelens_cfg_dict(cfg: SAEConfig) -> dict[str, Any]:
    """The cfg.json SAELens 6.x reads for `cfg`, with format and writer versions recorded."""
    out = cfg.to_dict()
    meta = out["metadata"]
    if _major(meta.get("sae_lens_version")) < 6:
        meta["sae_lens_version"] = SAELENS_FORMAT_VERSION
    meta.setdefault("sae_lens_training_version", SAELENS_FORMAT_VERSION)
    meta["jsae_version"] = JSAE_VERSION
    return out


# ---------------------------------------------------------------------------- save


def save(sae: SAE, path: str | Path, *, log_sparsity: Any = None, overwrite: bool = False) -> Path:
    """Write `sae` in SAELens format to directory `path`, atomically.

    `log_sparsity` ([d_sae], log10 of each latent's firing frequency) is written to
    sparsity.safetensors under the key "sparsity", as SAELens does. Training SAEs are saved
    in their inference form (BatchTopK and Matryoshka as JumpReLU).
    """
    sae = sae.to_inference()
    tensors = {name: np.asarray(value) for name, value in sae.params.items()}
    for name, value in tensors.items():
        if value.size and not np.all(np.isfinite(value.astype(np.float32))):
            raise NonFiniteError(f"refusing to save: parameter {name!r} contains NaN or Inf.")
    sparsity = None
    if log_sparsity is not None:
        sparsity = np.asarray(log_sparsity, np.float32)
        if sparsity.shape != (sae.cfg.d_sae,):
            raise FormatError(
                f"log_sparsity must have shape [d_sae={sae.cfg.d_sae}], got {sparsity.shape}."
            )
    path = Path(path)
    with atomic_output_dir(path, overwrite=overwrite) as tmp:
        (tmp / CFG_FILENAME).write_text(json.dumps(saelens_cfg_dict(sae.cfg), indent=2))
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp / WEIGHTS_FILENAME)
        if sparsity is not None:
            save_file({"sparsity": sparsity}, tmp / SPARSITY_FILENAME)
    return path


# ---------------------------------------------------------------------------- load


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file, with errors that name the file."""
    if not path.is_file():
        raise FormatError(f"{path} is missing.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(
            f"{path} is not valid JSON ({exc}); the file is corrupt or truncated."
        ) from None
    if not isinstance(data, dict):
        raise FormatError(f"{path} must hold a JSON object, got {type(data).__name__}.")
    return data


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Load every tensor of a .safetensors file as numpy, with clear errors."""
    if not path.is_file():
        raise FormatError(f"{path} is missing.")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(
            f"{path} could not be read as safetensors ({exc}); it is probably truncated or "
            "corrupt: download or copy it again."
        ) from None


def check_finite(tensors: dict[str, Any], source: str) -> None:
    """Raise NonFiniteError naming the first tensor holding NaN or Inf."""
    for name, value in tensors.items():
        arr = np.asarray(value)
        is_float = arr.dtype.kind == "f" or arr.dtype.name == "bfloat16"
        if is_float and not np.all(np.isfinite(arr.astype(np.float32))):
            raise NonFiniteError(f"{source}: tensor {name!r} contains NaN or Inf.")


def fold_legacy_scaling_factor(cfg_dict: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """SAELens < 6 could scale latents by a learned `scaling_factor` before decoding; fold it.

    `(f * s) @ W_dec == f @ (s[:, None] * W_dec)`, so the folded SAE has the same outputs
    (SAELens 6 refuses such checkpoints instead). An all-ones or unused factor is dropped.
    """
    if "scaling_factor" not in state:
        return state
    state = dict(state)
    scale = np.asarray(state.pop("scaling_factor"), np.float32)
    if cfg_dict.get("finetuning_scaling_factor") and not np.allclose(scale, 1.0):
        W_dec = np.asarray(state["W_dec"])
        state["W_dec"] = (W_dec.astype(np.float32) * scale[:, None]).astype(W_dec.dtype)
    return state


def load_saelens(path: str | Path, *, dtype: Any = None) -> SAE:
    """Load a SAELens-format SAE directory (any SAELens version) as a jsae `SAE`."""
    from jsae.sae import SAE

    path = Path(path)
    if not path.is_dir():
        raise FormatError(
            f"{path} is not a directory; a SAELens-format SAE is a folder holding "
            f"{CFG_FILENAME} and {WEIGHTS_FILENAME}."
        )
    cfg_dict = read_json(path / CFG_FILENAME)
    cfg = normalize_saelens_cfg(dict(cfg_dict))
    if dtype is not None:
        cfg = cfg.replace(dtype=dtype)
    state = read_safetensors(path / WEIGHTS_FILENAME)
    check_finite(state, str(path / WEIGHTS_FILENAME))
    state = fold_legacy_scaling_factor(cfg_dict, state)
    state = get_architecture(cfg.architecture).state_from_saelens(cfg, state)
    try:
        sae = SAE.from_params(cfg, state)
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None
    return sae.to_inference()


def load_log_sparsity(path: str | Path) -> np.ndarray | None:
    """log10 firing frequencies from `sparsity.safetensors`, or None when the file is absent."""
    file = Path(path) / SPARSITY_FILENAME
    if not file.exists():
        return None
    tensors = read_safetensors(file)
    if "sparsity" not in tensors:
        raise FormatError(f"{file} has no 'sparsity' tensor (found {sorted(tensors)}).")
    return tensors["sparsity"]


def log_feature_sparsity(firing_counts: Any, n_tokens: int) -> np.ndarray:
    """SAELens's log sparsity: log10(count / n_tokens + 1e-10). [d_sae]"""
    freq = np.asarray(firing_counts, np.float64) / max(int(n_tokens), 1)
    return np.log10(freq + 1e-10).astype(np.float32)


__all__ = [
    "load_log_sparsity",
    "load_saelens",
    "log_feature_sparsity",
    "normalize_saelens_cfg",
    "save",
]
