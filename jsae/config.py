"""`SAEConfig` and `SAEMetadata`: what an SAE is, as frozen, hashable data.

The config is static under `jax.jit` (it is the pytree's aux data), so it must be hashable and
compare by value, metadata included: two SAEs that differ only in metadata must not share a
jit cache entry, or the output pytree would carry the wrong metadata. Dict- and list-valued
metadata are therefore frozen into `FrozenDict` and tuples.

Field names and meanings follow SAELens 6.x's `cfg.json`, so `to_dict()` is what SAELens
reads and `from_dict()` reads what SAELens writes.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Collection, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jsae.errors import ConfigError, choices_hint

NORMALIZE_MODES = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
RESHAPE_MODES = ("none", "hook_z")

_DTYPES = {
    "float32": jnp.float32,
    "float64": jnp.float64,
    "float16": jnp.float16,
    "bfloat16": jnp.bfloat16,
}


# --------------------------------------------------------------------------------------------
# Hashable containers


class FrozenDict(Mapping[str, Any]):
    """An immutable, hashable mapping (values frozen recursively)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, Any] | None = None, /, **kwargs: Any):
        merged = dict(data or {}, **kwargs)
        self._data = {str(k): freeze(v) for k, v in merged.items()}
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(sorted(self._data.items(), key=lambda kv: kv[0])))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._data) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


def freeze(value: Any) -> Any:
    """Turn JSON-like data into hashable data: dict -> FrozenDict, list -> tuple."""
    if isinstance(value, FrozenDict):
        return value
    if isinstance(value, Mapping):
        return FrozenDict(value)
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def unfreeze(value: Any) -> Any:
    """Inverse of `freeze`, producing plain JSON-serialisable dicts and lists."""
    if isinstance(value, Mapping):
        return {k: unfreeze(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [unfreeze(v) for v in value]
    return value


def refuse_nulls(settings: Any, *, skip: Collection[str] = ()) -> None:
    """Refuse None in a settings dataclass field whose type does not take None.

    An empty YAML value (`log_to_wandb:`) is None; in a field that does not take None it would
    otherwise pass as a falsy value or fail much later. Fields in `skip` are the caller's: it
    maps their None to a default, or refuses it with a more specific message.
    """
    hints = typing.get_type_hints(type(settings))
    for f in fields(settings):
        if getattr(settings, f.name) is not None or f.name in skip:
            continue
        hint = hints[f.name]
        if _takes_none(hint):
            continue
        if f.default is not MISSING:
            fix = f"set a value, or leave the key out for its default ({unfreeze(f.default)!r})"
        elif f.default_factory is not MISSING:
            fix = f"set a value, or leave the key out for its default ({f.default_factory()!r})"
        else:
            fix = "it is required"
        raise ConfigError(f"{f.name} is empty (null), but it takes {_described(hint)}; {fix}.")


def _takes_none(hint: Any) -> bool:
    return hint is Any or type(None) in typing.get_args(hint) or hint is type(None)


def _described(hint: Any) -> str:
    """A type hint in a config user's words: bool -> 'true or false', tuple[int] -> 'a list'."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(dict.fromkeys(_described(h) for h in typing.get_args(hint)))
    origin = typing.get_origin(hint) or hint
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if origin in words:
        return words[origin]
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return "a mapping"
    return "a list"


# --------------------------------------------------------------------------------------------
# dtypes


def canonical_dtype(dtype: Any, *, key: str = "dtype") -> str:
    """Normalise 'torch.float32', jnp.float32, np.float32, np.dtype('float32') ... to 'float32'.

    None is refused, not read as numpy's default float64 (an empty `dtype:` in YAML is None);
    `key` names the setting in that message.
    """
    if dtype is None:
        raise ConfigError(
            f"{key} is empty (null); choose one of {sorted(_DTYPES)}, or leave the key out for "
            "its default."
        )
    try:  # numpy/jax scalar types and dtypes (jnp.bfloat16 is a type, not a dtype)
        name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    except TypeError:
        name = str(getattr(dtype, "name", None) or dtype)
    name = name.removeprefix("torch.").removeprefix("jnp.")
    if name not in _DTYPES:
        raise ConfigError(
            f"unsupported dtype {dtype!r}; choose one of {sorted(_DTYPES)}."
            + choices_hint(name, _DTYPES)
        )
    return name


def jax_dtype(dtype: Any) -> Any:
    """The jnp dtype for a dtype name, refusing float64 when JAX would silently downcast."""
    name = canonical_dtype(dtype)
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError(
            "dtype float64 needs 64-bit JAX: set JAX_ENABLE_X64=1 in the environment (or call "
            "jax.config.update('jax_enable_x64', True) before creating arrays), or use "
            "dtype='float32'."
        )
    return _DTYPES[name]


# --------------------------------------------------------------------------------------------
# Metadata


@dataclass(frozen=True, kw_only=True)
class SAEMetadata:
    """Where an SAE comes from and how to feed it; every field optional (None = unknown).

    Attribute and dict-style access both work (`meta.hook_name`, `meta["hook_name"]`);
    keys jsae does not know are kept in `extra` and round-trip through `cfg.json`.
    """

    model_name: str | None = None  # e.g. "gpt2-small", "gemma-2-2b"
    hook_name: str | None = None  # TransformerLens-style hook, e.g. "blocks.8.hook_resid_pre"
    hook_head_index: int | None = None  # one attention head of a head-shaped hook
    hook_name_out: str | None = None  # transcoders: the hook they write to
    hook_head_index_out: int | None = None
    hf_hook_name: str | None = None  # Hugging Face module path, when known
    hf_hook_name_out: str | None = None
    model_class_name: str | None = None
    model_from_pretrained_kwargs: FrozenDict | None = None
    context_size: int | None = None  # tokens per sequence the SAE was trained on
    prepend_bos: bool | None = None
    seqpos_slice: tuple | None = None  # (start, stop, step) positions used in training
    dataset_path: str | None = None
    exclude_special_tokens: Any = None  # bool or a tuple of token ids
    sequence_separator_token: Any = None  # int, "bos", "eos", "sep" or None
    disable_concat_sequences: bool | None = None
    neuronpedia_id: str | None = None  # e.g. "gpt2-small/8-res-jb"
    sae_lens_version: str | None = None  # the SAELens cfg.json schema version read or written
    sae_lens_training_version: str | None = None
    extra: FrozenDict = field(default_factory=FrozenDict)  # any other key

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, freeze(getattr(self, f.name)))
        if not isinstance(self.extra, FrozenDict):
            object.__setattr__(self, "extra", FrozenDict(self.extra))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SAEMetadata:
        """Build from a `cfg.json` metadata dict; unknown keys go to `extra`."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: data.pop(k) for k in list(data) if k in known}
        extra = dict(data.pop("extra", None) or {})
        extra.update(data)
        return cls(**kwargs, extra=FrozenDict(extra))

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: known fields that are set, then the extra keys."""
        out = {
            f.name: unfreeze(getattr(self, f.name))
            for f in fields(self)
            if f.name != "extra" and getattr(self, f.name) is not None
        }
        out.update(unfreeze(self.extra))
        return out

    def replace(self, **changes: Any) -> SAEMetadata:
        """A copy with fields changed; unknown names land in `extra`."""
        data = self.to_dict()
        data.update(changes)
        return SAEMetadata.from_dict(data)

    def get(self, key: str, default: Any = None) -> Any:
        value = self[key]
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        if key != "extra" and key in {f.name for f in fields(self)}:
            return getattr(self, key)
        return self.extra.get(key)

    def __contains__(self, key: str) -> bool:
        return self[key] is not None


# --------------------------------------------------------------------------------------------
# SAE config


@dataclass(frozen=True, kw_only=True)
class SAEConfig:
    """The static description of an SAE: architecture, sizes, input handling, metadata.

    Arguments are keyword-only. Architecture-specific fields (`k`, `d_out`, ...) are checked by
    the architecture's own `validate`, so a wrong combination fails here with a clear message
    rather than deep inside a jitted call.
    """

    architecture: str  # registry name: "standard", "gated", "jumprelu", "topk", "transcoder", ...
    d_in: int  # input width
    d_sae: int  # number of latents
    dtype: str = "float32"  # parameter and compute dtype; thresholds always stay float32
    apply_b_dec_to_input: bool | None = None  # subtract b_dec before encoding (None = arch default)
    normalize_activations: str = "none"  # one of NORMALIZE_MODES
    reshape_activations: str = "none"  # "hook_z": inputs are [..., n_heads, d_head]
    k: int | None = None  # topk: active latents per token
    rescale_acts_by_decoder_norm: bool = False  # topk: rank latents by pre-act * ||W_dec row||
    d_out: int | None = None  # transcoders: output width (defaults to d_in)
    metadata: SAEMetadata = field(default_factory=SAEMetadata)

    def __post_init__(self) -> None:
        from jsae.architectures import get_architecture  # late import: registry imports us

        set_ = object.__setattr__
        set_(self, "dtype", canonical_dtype(self.dtype))
        if isinstance(self.metadata, Mapping):
            set_(self, "metadata", SAEMetadata.from_dict(self.metadata))
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if self.normalize_activations not in NORMALIZE_MODES:
            raise ConfigError(
                f"normalize_activations={self.normalize_activations!r} is not supported; "
                f"choose one of {list(NORMALIZE_MODES)}."
                + choices_hint(self.normalize_activations, NORMALIZE_MODES)
            )
        if self.reshape_activations not in RESHAPE_MODES:
            raise ConfigError(
                f"reshape_activations={self.reshape_activations!r} is not supported; "
                f"choose one of {list(RESHAPE_MODES)}."
            )
        arch = get_architecture(self.architecture)
        if self.apply_b_dec_to_input is None:
            set_(self, "apply_b_dec_to_input", not arch.is_transcoder)
        arch.validate(self)
        if arch.is_transcoder and self.d_out is None:  # cfg.json spells it out: SAELens needs it
            set_(self, "d_out", self.d_in)

    @property
    def jax_dtype(self) -> Any:
        """The jnp dtype of the parameters."""
        return jax_dtype(self.dtype)

    @property
    def output_dim(self) -> int:
        """Width of the reconstruction: d_out for transcoders, else d_in."""
        return self.d_out if self.d_out is not None else self.d_in

    def replace(self, **changes: Any) -> SAEConfig:
        """A copy with fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The SAELens 6.x inference `cfg.json` dict."""
        from jsae.architectures import get_architecture

        return get_architecture(self.architecture).cfg_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SAEConfig:
        """Read a SAELens `cfg.json` dict (6.x or older; see `jsae.io.normalize_saelens_cfg`)."""
        from jsae.io import normalize_saelens_cfg

        return normalize_saelens_cfg(dict(data))
