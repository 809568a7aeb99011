"""Pretokenize a text dataset into fixed-length contexts, as SAELens's PretokenizeRunner does.

    ds = pretokenize_dataset("corpus.jsonl", tokenizer, context_size=128, save_path="tok/")

Same output as SAELens for the same settings, token for token: each text is encoded with the
tokenizer's own special tokens (`tokenizer.encode`), rows are packed in map batches of
`batch_size` rows (a partial context at the end of each batch is dropped, as in SAELens), the
result has one column `input_ids`, and `save_path` also receives SAELens's `sae_lens.json`
metadata so SAELens and jsae both recognise the dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jsae.activations.data import load_dataset_any
from jsae.activations.tokenization import (
    PackingConfig,
    SpecialToken,
    pack_documents,
    resolve_special_token,
    tokenize_texts,
)
from jsae.errors import ConfigError

METADATA_FILENAME = "sae_lens.json"


def pretokenize_dataset(
    dataset: Any,
    tokenizer: Any,
    *,
    context_size: int = 128,
    column_name: str = "text",
    begin_batch_token: SpecialToken = "bos",
    begin_sequence_token: SpecialToken = None,
    sequence_separator_token: SpecialToken = "bos",
    disable_concat_sequences: bool = False,
    batch_size: int = 1000,
    shuffle: bool = False,
    seed: int | None = None,
    split: str = "train",
    save_path: str | Path | None = None,
    tokenizer_name: str | None = None,
) -> Any:
    """A `datasets.Dataset` with an `input_ids` column of `[context_size]` contexts."""
    import datasets

    ds = load_dataset_any(dataset, split=split)
    if not isinstance(ds, datasets.Dataset):
        raise ConfigError("pretokenize_dataset needs a map-style dataset (streaming=False).")
    if column_name not in ds.column_names:
        raise ConfigError(
            f"the dataset has no column {column_name!r}; found columns {ds.column_names}."
        )
    cfg = PackingConfig(
        context_size=context_size,
        begin_batch_token_id=resolve_special_token(
            begin_batch_token, tokenizer, what="begin_batch_token"
        ),
        begin_sequence_token_id=resolve_special_token(
            begin_sequence_token, tokenizer, what="begin_sequence_token"
        ),
        sequence_separator_token_id=resolve_special_token(
            sequence_separator_token, tokenizer, what="sequence_separator_token"
        ),
        disable_concat_sequences=disable_concat_sequences,
    )

    def pack(batch: dict[str, list[Any]]) -> dict[str, list[np.ndarray]]:
        docs = tokenize_texts(tokenizer, batch[column_name], keep_bos=True)
        return {"input_ids": [c for c, _ in pack_documents(docs, cfg)]}

    out = ds.map(pack, batched=True, batch_size=batch_size, remove_columns=ds.column_names)
    if shuffle:
        out = out.shuffle(seed=seed)
    if save_path is not None:
        out.save_to_disk(str(save_path))
        metadata = {
            "sae_lens_version": None,
            "jsae_version": _jsae_version(),
            "tokenizer_name": tokenizer_name or getattr(tokenizer, "name_or_path", None),
            "original_dataset": str(dataset) if isinstance(dataset, str | Path) else None,
            "original_dataset_name": None,
            "original_split": split,
            "original_data_files": None,
            "original_column_name": column_name,
            "context_size": context_size,
            "shuffled": shuffle,
            "seed": seed,
            "begin_batch_token": begin_batch_token,
            "begin_sequence_token": begin_sequence_token,
            "sequence_separator_token": sequence_separator_token,
            "disable_concat_sequences": disable_concat_sequences,
        }
        (Path(save_path) / METADATA_FILENAME).write_text(json.dumps(metadata, indent=2))
    return out


def _jsae_version() -> str:
    from jsae import __version__

    return __version__
