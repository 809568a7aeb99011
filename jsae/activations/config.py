"""`LanguageModelSettings`: which model, hook and dataset activations come from, and how.

One frozen dataclass for the model/data concern of a run (`jsae train`, `jsae cache`,
`jsae eval`). Field names are SAELens's runner-config names where SAELens has the field
(`model_name`, `hook_name`, `dataset_path`, `context_size`, `prepend_bos`, ...), so a SAELens
config's keys route here unchanged; every field is documented where it is declared.

    settings = LanguageModelSettings(model_name="gpt2", hook_name="blocks.8.hook_resid_pre",
                                     dataset_path="monology/pile-uncopyrighted")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from jsae.config import canonical_dtype, freeze, refuse_nulls, unfreeze
from jsae.errors import ConfigError, choices_hint


def option(default: Any, help: str) -> Any:
    """A dataclass field with its documentation attached."""
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class LanguageModelSettings:
    """The model, hook and dataset activations are read from, and the activation store's knobs."""

    # model
    model_name: str | None = option(
        None, "Hugging Face model directory or hub id (e.g. gpt2); activations come from it"
    )
    model_revision: str | None = option(None, "hub revision (branch, tag or commit) of the model")
    model_dtype: str = option("float32", "dtype the model runs in (float32, bfloat16, ...)")
    model_class_name: str | None = option(
        None, "SAELens compatibility: recorded in the SAE metadata, otherwise unused"
    )
    model_from_pretrained_kwargs: dict = option(  # noqa: RUF009 - copied per instance
        {}, "SAELens compatibility: recorded in the SAE metadata, otherwise unused"
    )
    hook_name: str | None = option(
        None, "TransformerLens-style hook (blocks.8.hook_resid_pre) or a raw module path"
    )
    hook_head_index: int | None = option(
        None, "for head-shaped hooks (attn.hook_z): train on one head instead of all heads"
    )
    hook_name_out: str | None = option(
        None, "transcoders: the hook whose activations they learn to write (blocks.8.hook_mlp_out)"
    )
    hook_head_index_out: int | None = option(
        None, "transcoders: one head of a head-shaped hook_name_out"
    )
    # data
    dataset_path: str | None = option(
        None, "dataset: hub id, save_to_disk directory, or .jsonl/.json/.parquet/.csv/.txt file"
    )
    dataset_name: str | None = option(None, "the dataset's configuration name on the hub")
    dataset_split: str = option("train", "split to read")
    dataset_column: str | None = option(
        None, "column holding text or tokens (default: tokens, input_ids, text or problem)"
    )
    dataset_trust_remote_code: bool | None = option(None, "passed to datasets.load_dataset")
    streaming: bool = option(True, "stream the dataset instead of downloading it whole")
    is_dataset_tokenized: bool | None = option(
        None, "SAELens compatibility: informational; tokenized datasets are detected by column"
    )
    context_size: int = option(128, "tokens per context fed to the model")
    prepend_bos: bool = option(True, "start every context with BOS (text datasets)")
    sequence_separator_token: int | str | None = option(
        "bos", "token between documents packed into one context: an id, bos, eos, sep or None"
    )
    disable_concat_sequences: bool = option(
        False, "one document per context (shorter documents skipped) instead of packing"
    )
    seqpos_slice: Sequence[int | None] = option(
        (None,), "positions kept from each context, as (start, stop, step) of a Python slice"
    )
    exclude_special_tokens: bool | Sequence[int] = option(
        False, "drop activations at special tokens: True (BOS/EOS/PAD/SEP) or a list of ids"
    )
    # activation store
    store_batch_size_prompts: int = option(32, "contexts per model forward")
    n_batches_in_buffer: int = option(
        20,
        "model batches held in the shuffle buffer (its size in tokens is this times "
        "store_batch_size_prompts times the positions kept per context)",
    )
    activations_mixing_fraction: float = option(
        0.5, "fraction of the buffer kept back at each refill to mix with newer activations"
    )
    activation_dtype: str = option("float32", "dtype of buffered and cached activations")
    prefetch_batches: int = option(
        2, "token batches read and tokenized ahead, in a background thread"
    )
    # cached activations
    use_cached_activations: bool = option(
        False, "train on activations cached with `jsae cache` instead of running the model"
    )
    cached_activations_path: str | None = option(
        None, "directory of the activation cache (written by `jsae cache`)"
    )
    # evaluation with the SAE spliced into the model
    n_eval_batches: int = option(10, "batches for the CE/KL evals (during and after training)")
    eval_batch_size_prompts: int | None = option(
        None, "contexts per eval batch (default: store_batch_size_prompts)"
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen and hashable: lists become tuples, dicts FrozenDicts
        dtypes = ("model_dtype", "activation_dtype")  # canonical_dtype's message lists them
        refuse_nulls(self, skip=("seqpos_slice", "model_from_pretrained_kwargs", *dtypes))
        given = self.seqpos_slice
        try:
            parsed = _parse_seqpos(given) if isinstance(given, str) else given
            parsed = parsed if isinstance(parsed, list | tuple) or parsed is None else (parsed,)
            values = tuple(None if v is None else _whole(v) for v in (parsed or (None,)))
        except (TypeError, ValueError, OverflowError):
            values = ()
        if not 1 <= len(values) <= 3:
            raise ConfigError(
                f"seqpos_slice must be slice arguments such as [1, null] or '1:-1' (start, stop, "
                f"step; integers or null), got {given!r}."
            )
        set_(self, "seqpos_slice", values)
        if not isinstance(self.exclude_special_tokens, bool | list | tuple):
            raise ConfigError(
                f"exclude_special_tokens must be true, false or a list of token ids, got "
                f"{self.exclude_special_tokens!r}."
            )
        if isinstance(self.exclude_special_tokens, list | tuple):
            try:
                tokens = tuple(_whole(t) for t in self.exclude_special_tokens)
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(
                    f"exclude_special_tokens must be true, false or a list of token ids, got "
                    f"{self.exclude_special_tokens!r}."
                ) from None
            set_(self, "exclude_special_tokens", tokens)
        set_(
            self,
            "model_from_pretrained_kwargs",
            freeze(dict(self.model_from_pretrained_kwargs or {})),
        )
        if (
            isinstance(self.sequence_separator_token, str)
            and self.sequence_separator_token.isdigit()
        ):
            set_(self, "sequence_separator_token", int(self.sequence_separator_token))
        # one spelling per dtype ("torch.bfloat16", jnp.bfloat16 -> "bfloat16"): caches record
        # it and compare it on resume, and numpy only knows the plain names
        for name in dtypes:
            set_(self, name, canonical_dtype(getattr(self, name), key=name))
        for name in (
            "context_size",
            "store_batch_size_prompts",
            "n_batches_in_buffer",
            "n_eval_batches",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if (
            isinstance(self.prefetch_batches, bool)
            or not isinstance(self.prefetch_batches, int)
            or self.prefetch_batches < 0
        ):
            raise ConfigError(
                "prefetch_batches must be a whole number of batches (0: no background thread), "
                f"got {self.prefetch_batches!r}."
            )
        if len(self.seqpos_slice) > 3:
            raise ConfigError(f"seqpos_slice has at most 3 entries, got {self.seqpos_slice}.")
        if not 0.0 <= self.activations_mixing_fraction < 1.0:
            raise ConfigError(
                "activations_mixing_fraction must be in [0, 1), got "
                f"{self.activations_mixing_fraction}."
            )
        if self.use_cached_activations and not self.cached_activations_path:
            raise ConfigError("use_cached_activations=True needs cached_activations_path.")

    # ------------------------------------------------------------------ helpers

    @property
    def wants_model(self) -> bool:
        """Whether activations come from running a model (not a cache)."""
        return self.model_name is not None and not self.use_cached_activations

    def require(self, *names: str) -> None:
        """Raise a ConfigError naming every listed field that is unset."""
        missing = [n for n in names if getattr(self, n) in (None, "")]
        if missing:
            raise ConfigError(f"missing required setting(s) {missing} (see --help for each).")

    def replace(self, **changes: Any) -> LanguageModelSettings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values."""
        return {f.name: unfreeze(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LanguageModelSettings:
        known = {f.name for f in fields(cls)}
        unknown = [k for k in data if k not in known]
        if unknown:
            hint = choices_hint(unknown[0], known)
            raise ConfigError(f"unknown model/data setting(s) {unknown}.{hint}")
        return cls(**dict(data))

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> its documentation."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    def sae_metadata(self) -> dict[str, Any]:
        """The SAE metadata these settings imply (SAELens cfg.json keys)."""
        return {
            "model_name": self.model_name,
            "model_class_name": self.model_class_name,
            "model_from_pretrained_kwargs": unfreeze(self.model_from_pretrained_kwargs) or None,
            "hook_name": self.hook_name,
            "hook_head_index": self.hook_head_index,
            "hook_name_out": self.hook_name_out,
            "hook_head_index_out": self.hook_head_index_out,
            "context_size": self.context_size,
            "prepend_bos": self.prepend_bos,
            "seqpos_slice": list(self.seqpos_slice),
            "dataset_path": self.dataset_path,
            "exclude_special_tokens": (
                list(self.exclude_special_tokens)
                if isinstance(self.exclude_special_tokens, tuple)
                else self.exclude_special_tokens
            ),
            "sequence_separator_token": self.sequence_separator_token,
            "disable_concat_sequences": self.disable_concat_sequences,
        }


def _whole(value: Any) -> int:
    """An integer from an int or an integral float/string; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(value)
    number = float(value) if isinstance(value, str) else value
    if int(number) != number:
        raise ValueError(value)
    return int(number)


def _parse_seqpos(text: str) -> tuple:
    """ "(1, None)", "[1, null, 2]" or "1:-1" -> a tuple for slice(*...)."""
    import yaml

    text = text.strip()
    if ":" in text and not text.startswith(("(", "[")):
        return tuple(int(p) if p.strip() else None for p in text.split(":"))
    value = yaml.safe_load(text.replace("(", "[").replace(")", "]").replace("None", "null"))
    return tuple(value) if isinstance(value, list) else (value,)


# ------------------------------------------------------------------------------ command line


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["key=value", ...]` -> dict, values read as YAML (`8`, `true`, `null`, `[1, 2]`)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {item!r}.")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value) if value != "" else None
    return out


def load_yaml(path: str | None) -> dict[str, Any]:
    """A YAML mapping from a file (empty when `path` is None)."""
    if path is None:
        return {}
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist.")
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{file} must hold a mapping of settings, got {type(data).__name__}.")
    return dict(data)


def settings_from_sources(
    config_path: str | None,
    overrides: list[str],
    *,
    defaults: Mapping[str, Any] | None = None,
    **explicit: Any,
) -> LanguageModelSettings:
    """Settings from `defaults`, then a YAML file, then `key=value` overrides, then explicit
    (non-None) values, each overriding the ones before.

    The YAML file may be a full `jsae train` config: keys of other concerns are ignored here,
    and a nested `model:` section is read too.
    """
    data = load_yaml(config_path)
    nested = data.pop("model", None)
    known = {f.name for f in fields(LanguageModelSettings)}
    merged = {k: v for k, v in (defaults or {}).items() if v is not None}
    merged.update({k: v for k, v in data.items() if k in known})
    if isinstance(nested, Mapping):
        merged.update(nested)
    cli = parse_overrides(overrides)
    unknown = [k for k in cli if k not in known]
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {unknown}."
            + choices_hint(unknown[0], known)
            + f" Valid: {sorted(known)}."
        )
    merged.update(cli)
    merged.update({k: v for k, v in explicit.items() if v is not None})
    return LanguageModelSettings.from_dict(merged)
