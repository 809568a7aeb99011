"""Model weights from a Hugging Face directory into a Flax parameter tree, without torch.

PyTorch-saved checkpoints (`model.safetensors`, or shards listed in
`model.safetensors.index.json`) are read as numpy arrays and renamed onto the Flax module's
parameter tree: `weight` becomes `kernel` (transposed), `embedding` or `scale` according to
what the Flax module declares, everything else keeps its name. Flax checkpoints
(`flax_model.msgpack`) are read as they are. Every expected parameter must be found with the
expected shape, or loading fails saying which.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors import SafetensorError, safe_open

from jsae.errors import FormatError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
FLAX_MSGPACK = "flax_model.msgpack"
WEIGHT_FILES = (SAFETENSORS_INDEX, SAFETENSORS, FLAX_MSGPACK)

# Buffers PyTorch checkpoints sometimes carry that no Flax module has as a parameter.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq", ".embed_scale")

Path_ = tuple[str, ...]


def weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint files in `model_dir`, in the order jsae prefers them."""
    if (model_dir / SAFETENSORS_INDEX).is_file():
        index = json.loads((model_dir / SAFETENSORS_INDEX).read_text())
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards:
            raise FormatError(f"{model_dir / SAFETENSORS_INDEX} lists no weight shards.")
        return [model_dir / s for s in shards]
    for name in (SAFETENSORS, FLAX_MSGPACK):
        if (model_dir / name).is_file():
            return [model_dir / name]
    found = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else []
    hint = ""
    if any(n.endswith((".bin", ".pt", ".pth")) for n in found):
        hint = (
            " It holds PyTorch pickles (.bin): jsae reads safetensors only, so save the model "
            "with `model.save_pretrained(dir, safe_serialization=True)` first."
        )
    raise FormatError(
        f"no model weights in {model_dir}: expected one of {', '.join(WEIGHT_FILES)}; "
        f"found {found}.{hint}"
    )


def read_torch_state(files: list[Path]) -> dict[str, np.ndarray]:
    """Every tensor in the safetensors files, as numpy arrays (bfloat16 via ml_dtypes)."""
    state: dict[str, np.ndarray] = {}
    for path in files:
        if not path.is_file():
            raise FormatError(f"weight shard {path} is missing.")
        try:
            with safe_open(str(path), framework="numpy") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                    state[key] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as exc:
            raise FormatError(f"cannot read {path}: {exc}. Is the file complete?") from exc
    return state


def _candidates(key: Path_, prefix: str) -> list[Path_]:
    if key[0] == prefix:
        return [key, key[1:]]
    return [key, (prefix, *key)]


def tie_lm_head(params: dict[Path_, Any], target: Mapping[Path_, Any]) -> None:
    """Fill a missing `lm_head/kernel` with the token embedding's transpose, in place.

    For `tie_word_embeddings=True` checkpoints (Llama 3.2 1B/3B, SmolLM2...): PyTorch ties the
    head to the embedding and saves no `lm_head.weight`, while transformers' Flax Llama and
    Mistral keep a head of their own whatever the config says.
    """
    for key, want in target.items():
        if key[-2:] != ("lm_head", "kernel") or key in params:
            continue
        shape = tuple(want.shape)[::-1]  # the embedding is [vocab, d]; the kernel [d, vocab]
        for name, value in params.items():
            if name[-1] == "embedding" and tuple(value.shape) == shape:
                params[key] = value.T
                break


def torch_to_flax(
    state: Mapping[str, np.ndarray], target: Mapping[Path_, Any], *, prefix: str, tied: bool
) -> dict[Path_, np.ndarray]:
    """Rename a PyTorch state dict onto a flat Flax target `{path: ShapeDtypeStruct}`."""
    out: dict[Path_, np.ndarray] = {}
    unused = []
    for name, value in state.items():
        placed = False
        for key in _candidates(tuple(name.split(".")), prefix):
            module, leaf = key[:-1], key[-1]
            if leaf in ("weight", "gamma") and (*module, "scale") in target:
                out[(*module, "scale")] = value
            elif leaf == "weight" and (*module, "embedding") in target:
                out[(*module, "embedding")] = value
            elif leaf == "weight" and (*module, "kernel") in target and value.ndim == 2:
                out[(*module, "kernel")] = value.T
            elif leaf == "beta" and (*module, "bias") in target:
                out[(*module, "bias")] = value
            elif key in target:
                out[key] = value
            else:
                continue
            placed = True
            break
        if not placed:
            unused.append(name)

    if tied:
        tie_lm_head(out, target)
    missing = sorted("/".join(k) for k in target if k not in out)
    if missing:
        raise FormatError(
            f"the checkpoint lacks {len(missing)} parameter(s) the model needs, e.g. "
            f"{missing[:5]}; it has e.g. {sorted(state)[:5]}. Is it the model its config.json "
            "describes?"
        )
    for key, value in out.items():
        want = tuple(target[key].shape)
        if tuple(value.shape) != want:
            raise FormatError(
                f"parameter {'/'.join(key)} has shape {tuple(value.shape)} in the checkpoint "
                f"but the config implies {want}."
            )
    unused = [
        n for n in unused if not n.endswith(_IGNORED_SUFFIXES) and not (tied and "lm_head" in n)
    ]
    if unused:
        warnings.warn(
            f"ignored {len(unused)} checkpoint tensor(s) the Flax model has no place for: "
            f"{unused[:5]}",
            stacklevel=3,
        )
    return out


def read_flax_msgpack(path: Path, target: Mapping[Path_, Any]) -> dict[Path_, np.ndarray]:
    """A transformers Flax checkpoint, checked against the target tree."""
    from flax.serialization import msgpack_restore

    try:
        tree = msgpack_restore(path.read_bytes())
    except Exception as exc:  # msgpack raises several unrelated types on corrupt input
        raise FormatError(f"cannot read {path}: {exc}. Is the file complete?") from exc
    flat = flatten_dict(tree.get("params", tree))
    prefix = next(iter(target))[0] if target else ""
    if target and not any(k in target for k in flat):  # base-model checkpoint, headed model
        flat = {(prefix, *k): v for k, v in flat.items()}
    state = {".".join(k): np.asarray(v) for k, v in flat.items()}
    return torch_to_flax(state, target, prefix=prefix, tied=True)


def load_params(
    model_dir: Path, target: Mapping[Path_, Any], *, prefix: str, tied: bool, dtype: Any
) -> dict[str, Any]:
    """The nested Flax params for the model in `model_dir`, floating arrays cast to `dtype`."""
    files = weight_files(model_dir)
    if files[0].name == FLAX_MSGPACK:
        flat = read_flax_msgpack(files[0], target)
    else:
        flat = torch_to_flax(read_torch_state(files), target, prefix=prefix, tied=tied)
    cast = {
        k: jnp.asarray(v, dtype if jnp.issubdtype(v.dtype, jnp.floating) else None)
        for k, v in flat.items()
    }
    return unflatten_dict(cast)


def cast_floating(params: Any, dtype: Any) -> Any:
    """`params` with every floating-point leaf cast to `dtype`."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
    )
