"""`load_model`: a Hugging Face model directory or hub repo -> `HookedModel`, without torch.

Hub repos go through `huggingface_hub` (its cache, `revision`, `HF_HUB_OFFLINE`, tokens): only
the files needed are fetched (config, weights, tokenizer), then the snapshot directory is
loaded like any local directory. Configs written by transformers 5 are translated to what
the transformers 4 Flax classes read (rotary settings moved into `rope_parameters`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict

from jsae.errors import ConfigError, FormatError
from jsae.io import read_json
from jsae.models.families import family_for, flax_module, supported_model_types
from jsae.models.hooked import HookedModel, init_params
from jsae.models.weights import FLAX_MSGPACK, SAFETENSORS, SAFETENSORS_INDEX, load_params

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
)


def load_model(
    name_or_path: str | Path,
    *,
    dtype: Any = jnp.float32,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
) -> HookedModel:
    """Load a causal LM as a `HookedModel` from a local directory or a Hugging Face hub repo.

    The directory (or repo) holds `config.json` and weights as `model.safetensors` (sharded or
    not, as PyTorch `save_pretrained` writes them) or `flax_model.msgpack`, plus optionally a
    tokenizer. Parameters are cast to `dtype`, which is also the compute dtype. `revision`
    (branch, tag or commit), `cache_dir` and `token` are passed to huggingface_hub; set
    `HF_HUB_OFFLINE=1` to use only what is already in the cache.
    """
    model_dir = resolve_model_dir(name_or_path, revision=revision, cache_dir=cache_dir, token=token)
    config = normalize_config(read_json(model_dir / "config.json"))
    family = family_for(config)
    dtype = jnp.dtype(dtype)
    module = flax_module(family, config, dtype)
    shapes = jax.eval_shape(lambda: init_params(module, family, config, jax.random.key(0)))
    params = load_params(
        model_dir,
        flatten_dict(shapes),
        prefix=family.prefix,
        tied=bool(getattr(config, "tie_word_embeddings", False)),
        dtype=dtype,
    )
    return HookedModel(
        module,
        params,
        config,
        family,
        tokenizer=load_tokenizer(model_dir),
        name_or_path=str(name_or_path),
    )


# --------------------------------------------------------------------------- config


def normalize_config(config: Any) -> Any:
    """A transformers 4 config object from a config object or `config.json` dict (4.x or 5.x)."""
    import transformers

    data = dict(config) if isinstance(config, dict) else config.to_dict()
    model_type = data.get("model_type")
    if model_type not in supported_model_types():
        raise ConfigError(
            f"model_type {model_type!r} is not supported: jsae runs "
            f"{', '.join(supported_model_types())}."
        )
    rope = data.get("rope_parameters") or {}
    if rope and "rope_theta" not in data and "rope_theta" in rope:
        data["rope_theta"] = rope["rope_theta"]
    if rope and not data.get("rope_scaling") and rope.get("rope_type", "default") != "default":
        data["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if model_type in ("gemma", "gemma2") and not data.get("hidden_activation"):
        act = data.get("hidden_act") or "gelu_pytorch_tanh"
        # "gelu" in old Gemma configs means the tanh approximation (as transformers reads it)
        data["hidden_activation"] = "gelu_pytorch_tanh" if act == "gelu" else act
    config_class = transformers.CONFIG_MAPPING[model_type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown transformers-5 keys are kept as attributes
        return config_class.from_dict(data)


# --------------------------------------------------------------------------- files


def resolve_model_dir(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    weights: bool = True,
) -> Path:
    """A local directory holding the model's files (downloading them from the hub if needed;
    `weights=False`: its config and tokenizer files only)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ConfigError(
                f"revision={revision!r} applies to hub repos, but {name_or_path} is a local "
                "directory; drop revision or pass the repo id."
            )
        if not (path / "config.json").is_file():
            raise FormatError(
                f"{path} has no config.json: it is not a Hugging Face model directory."
            )
        return path
    text = str(name_or_path)
    if path.exists() or text.startswith(("/", "./", "../", "~")) or text.count("/") > 1:
        raise FileNotFoundError(
            f"model directory {text} does not exist (and it is not a hub repo id like 'org/name')."
        )
    return _download(text, revision=revision, cache_dir=cache_dir, token=token, weights=weights)


def _download(
    repo_id: str,
    *,
    revision: str | None,
    cache_dir: str | Path | None,
    token: str | bool | None,
    weights: bool = True,
) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def fetch(filename: str) -> Path | None:
        try:
            return Path(
                hf_hub_download(
                    repo_id, filename, revision=revision, cache_dir=cache_dir, token=token
                )
            )
        except EntryNotFoundError:  # also: not in the local cache when offline
            return None

    try:
        config_path = fetch("config.json")
    except HFValidationError as exc:
        raise ConfigError(
            f"{repo_id!r} is neither a local directory nor a valid hub repo id: {exc}"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ConfigError(
            f"cannot load {repo_id!r} at revision {revision or 'main'}: {exc}"
        ) from None
    if config_path is None:
        where = (
            "the local Hugging Face cache (HF_HUB_OFFLINE=1 is set)"
            if constants.HF_HUB_OFFLINE
            else "the hub repo or the local cache"
        )
        raise ConfigError(
            f"model {repo_id!r} (revision {revision or 'main'}) has no config.json in {where}. "
            "Check the name, or download it while online first."
        )
    snapshot = config_path.parent
    if weights:
        index = fetch(SAFETENSORS_INDEX)
        if index is not None:
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            for shard in shards:
                if fetch(shard) is None:
                    raise FormatError(
                        f"{repo_id}: weight shard {shard} listed in {SAFETENSORS_INDEX} is missing."
                    )
        elif fetch(SAFETENSORS) is None and fetch(FLAX_MSGPACK) is None:
            raise FormatError(
                f"{repo_id} (revision {revision or 'main'}) has no {SAFETENSORS}, sharded "
                f"safetensors or {FLAX_MSGPACK}"
                + (" in the local cache (HF_HUB_OFFLINE=1)." if constants.HF_HUB_OFFLINE else ".")
                + " jsae reads PyTorch weights from safetensors only."
            )
    for name in TOKENIZER_FILES:
        fetch(name)
    return snapshot


def tokenizer_of(
    name_or_path: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None
) -> Any:
    """The tokenizer of a model directory or hub repo (None if it has none), fetching the
    tokenizer files without the weights: what a cache's `exclude_special_tokens` needs."""
    return load_tokenizer(
        resolve_model_dir(name_or_path, revision=revision, cache_dir=cache_dir, weights=False)
    )


def load_tokenizer(model_dir: Path) -> Any:
    """The directory's Hugging Face tokenizer, or None if it has none."""
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:  # tokenizers fail in many ways (missing sentencepiece, ...)
        warnings.warn(
            f"could not load the tokenizer in {model_dir} ({type(exc).__name__}: {exc}); "
            "model.tokenizer is None.",
            stacklevel=2,
        )
        return None
