"""Datasets in, fixed-length token contexts out: `load_dataset_any` and `TokenSource`.

    source = TokenSource("path/or/hub-id", tokenizer, context_size=128)
    tokens = source.next_batch(32)          # [32, 128] int32, packed as SAELens packs
    state = source.state(); ...; source.restore(state)   # resume exactly here

A dataset holds either text (a `text` or `problem` column, tokenized and packed on the fly)
or tokens (a `tokens` or `input_ids` column, one context per row, cut to `context_size`),
detected from the first row as SAELens does. Each process reads its own share of the rows
(`jax.process_index()` of `jax.process_count()`), so several hosts never read the same data.
The stream loops over epochs; `state()` records the epoch, the row and the offset inside it,
so a restored source continues with exactly the next context, streaming or not.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jsae.activations.tokenization import (
    TOKEN_DTYPE,
    PackingConfig,
    PackPosition,
    SpecialToken,
    bos_token_id,
    pack_documents,
    resolve_special_token,
    tokenize_texts,
)
from jsae.errors import ConfigError

TOKEN_COLUMNS = ("tokens", "input_ids")
TEXT_COLUMNS = ("text", "problem")
_FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".txt": "text",
    ".arrow": "arrow",
}


# ------------------------------------------------------------------------------ loading


def _is_saved_dataset(path: Path) -> bool:
    return any(
        (path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def load_dataset_any(
    path: Any,
    *,
    name: str | None = None,
    split: str = "train",
    data_files: Any = None,
    streaming: bool = False,
    trust_remote_code: bool | None = None,
) -> Any:
    """A `datasets` Dataset / IterableDataset from whatever the user points at.

    Accepts a Dataset or IterableDataset (returned as is), a directory written by
    `save_to_disk`, a data file (.json/.jsonl/.parquet/.csv/.txt/.arrow) or a folder of them,
    or a Hugging Face hub dataset id (loaded with `datasets.load_dataset`, which honours
    `HF_HUB_OFFLINE` and the local cache).
    """
    import datasets

    if isinstance(path, datasets.Dataset | datasets.IterableDataset):
        return path
    if isinstance(path, datasets.DatasetDict | datasets.IterableDatasetDict):
        return _pick_split(path, split)
    if not isinstance(path, str | Path):
        raise ConfigError(
            f"dataset must be a path, a hub id or a datasets.Dataset, got {type(path).__name__}."
        )
    local = Path(path).expanduser()
    if local.is_dir() and _is_saved_dataset(local):
        ds = _pick_split(datasets.load_from_disk(str(local)), split)
        return ds.to_iterable_dataset() if streaming else ds
    if local.is_file():
        builder = _FILE_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise ConfigError(
                f"cannot tell the format of {local}: use one of {sorted(_FILE_BUILDERS)}, a "
                "save_to_disk directory or a hub dataset id."
            )
        return datasets.load_dataset(
            builder, data_files=str(local), split=split, streaming=streaming
        )
    kwargs: dict[str, Any] = {"split": split, "streaming": streaming}
    if name is not None:
        kwargs["name"] = name
    if data_files is not None:
        kwargs["data_files"] = data_files
    if trust_remote_code is not None:
        kwargs["trust_remote_code"] = trust_remote_code
    try:
        return datasets.load_dataset(str(path), **kwargs)
    except (FileNotFoundError, ConnectionError) as exc:
        raise ConfigError(
            f"dataset {str(path)!r} is neither a local path nor a hub dataset that could be "
            f"loaded ({type(exc).__name__}: {exc}). Check the path or hub id; offline "
            "(HF_HUB_OFFLINE=1) only datasets already in the datasets cache load."
        ) from None


def _pick_split(ds: Any, split: str) -> Any:
    import datasets

    if isinstance(ds, datasets.DatasetDict | datasets.IterableDatasetDict):
        if split not in ds:
            raise ConfigError(f"dataset has no split {split!r}; it has {sorted(ds)}.")
        return ds[split]
    return ds


def first_row(ds: Any) -> Mapping[str, Any]:
    """The first row of a dataset (map-style or streaming), or a clear error if it is empty."""
    import datasets

    if isinstance(ds, datasets.Dataset):
        if len(ds) == 0:
            raise ConfigError("the dataset is empty.")
        return ds[0]
    for row in ds:
        return row
    raise ConfigError("the dataset is empty.")


def detect_column(row: Mapping[str, Any], column: str | None = None) -> tuple[str, bool]:
    """(column name, is_tokenized) from a row: tokens/input_ids first, then text/problem."""
    columns = list(row.keys())
    if column is not None:
        if column not in row:
            raise ConfigError(f"dataset has no column {column!r}; its columns are {columns}.")
        value = row[column]
        return column, not isinstance(value, str)
    for name in TOKEN_COLUMNS:
        if name in row:
            return name, True
    for name in TEXT_COLUMNS:
        if name in row:
            return name, False
    raise ConfigError(
        f"the dataset has no text or token column: found columns {columns}; expected one of "
        f"{list(TOKEN_COLUMNS + TEXT_COLUMNS)}. Rename the column, or name it: "
        "dataset_column=... in a config (TokenSource(column_name=...) in Python)."
    )


def shard_for_process(ds: Any, index: int, count: int) -> Any:
    """This process's share of the rows (every process gets a disjoint share)."""
    import datasets

    if count == 1:
        return ds
    if not 0 <= index < count:
        raise ConfigError(f"process index {index} out of range for {count} processes.")
    if isinstance(ds, datasets.Dataset):
        if len(ds) < count:
            raise ConfigError(
                f"the dataset has {len(ds)} rows, fewer than the {count} processes reading it."
            )
        return ds.shard(num_shards=count, index=index, contiguous=True)
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(ds, rank=index, world_size=count)


# ------------------------------------------------------------------------------ token source


class TokenSource:
    """An endless, resumable stream of token contexts `[context_size]` from a dataset.

    Text rows are tokenized (the tokenizer's own BOS removed) and packed by SAELens's rules
    with `begin_batch_token = BOS if prepend_bos`, `begin_sequence_token` and
    `sequence_separator_token`; tokenized rows are cut to `context_size` (rows shorter than
    it are an error). `shuffle_seed` shuffles the rows once (map-style: a full shuffle;
    streaming: shard order plus a buffer of `shuffle_buffer_size` rows).
    """

    def __init__(
        self,
        dataset: Any,
        tokenizer: Any = None,
        *,
        context_size: int,
        prepend_bos: bool = True,
        sequence_separator_token: SpecialToken = "bos",
        begin_sequence_token: SpecialToken = None,
        disable_concat_sequences: bool = False,
        column_name: str | None = None,
        split: str = "train",
        streaming: bool = False,
        dataset_name: str | None = None,
        data_files: Any = None,
        trust_remote_code: bool | None = None,
        shuffle_seed: int | None = None,
        shuffle_buffer_size: int = 1000,
        process_index: int | None = None,
        process_count: int | None = None,
        read_batch_rows: int = 64,
        loop: bool = True,
    ) -> None:
        import datasets

        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        ds = load_dataset_any(
            dataset,
            name=dataset_name,
            split=split,
            data_files=data_files,
            streaming=streaming,
            trust_remote_code=trust_remote_code,
        )
        if shuffle_seed is not None:
            if isinstance(ds, datasets.IterableDataset):
                ds = ds.shuffle(seed=shuffle_seed, buffer_size=shuffle_buffer_size)
            else:
                ds = ds.shuffle(seed=shuffle_seed)
        self.column, self.is_tokenized = detect_column(first_row(ds), column_name)
        self.dataset = shard_for_process(ds, process_index, process_count)
        self.tokenizer = tokenizer
        self.context_size = int(context_size)
        self.read_batch_rows = int(read_batch_rows)
        self.loop = loop
        if self.is_tokenized:
            self.packing = None
        else:
            if tokenizer is None:
                raise ConfigError(
                    f"the dataset holds text (column {self.column!r}) but no tokenizer was "
                    "given; load a model with a tokenizer or use a pretokenized dataset."
                )
            if prepend_bos and bos_token_id(tokenizer) is None:
                raise ConfigError(
                    "prepend_bos=True but the tokenizer has neither a BOS nor an EOS token; "
                    "set prepend_bos=False."
                )
            self.packing = PackingConfig(
                context_size=self.context_size,
                begin_batch_token_id=bos_token_id(tokenizer) if prepend_bos else None,
                begin_sequence_token_id=resolve_special_token(
                    begin_sequence_token, tokenizer, what="begin_sequence_token"
                ),
                sequence_separator_token_id=resolve_special_token(
                    sequence_separator_token, tokenizer, what="sequence_separator_token"
                ),
                disable_concat_sequences=disable_concat_sequences,
            )
        self._epoch = 0
        self._position = PackPosition()
        self._iter: Iterator[tuple[np.ndarray, PackPosition]] | None = None

    # -------------------------------------------------------------- reading rows

    def _row_batches(self, start: int) -> Iterator[list[Any]]:
        """Column values of consecutive rows from row `start` of this process's share."""
        import datasets

        ds, n = self.dataset, self.read_batch_rows
        if isinstance(ds, datasets.Dataset):
            for i in range(start, len(ds), n):
                yield list(ds[i : i + n][self.column])
            return
        if start:
            ds = ds.skip(start)
        for batch in ds.iter(batch_size=n):
            yield list(batch[self.column])

    def _documents(self, start: int) -> Iterator[np.ndarray]:
        for values in self._row_batches(start):
            yield from tokenize_texts(self.tokenizer, values)

    def _token_rows(self, start: int) -> Iterator[tuple[np.ndarray, PackPosition]]:
        row = start
        for values in self._row_batches(start):
            for value in values:
                tokens = np.asarray(value, TOKEN_DTYPE).reshape(-1)
                if len(tokens) < self.context_size:
                    raise ConfigError(
                        f"pretokenized row {row} has {len(tokens)} tokens, fewer than "
                        f"context_size={self.context_size}; use a context_size of at most "
                        "the dataset's, or re-tokenize it."
                    )
                if row == start and len(tokens) > self.context_size:
                    warnings.warn(
                        f"pretokenized rows hold {len(tokens)} tokens but context_size is "
                        f"{self.context_size}: the rest of each row is discarded.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                row += 1
                yield tokens[: self.context_size], PackPosition(row, 0, True)

    def _contexts(self, start: PackPosition) -> Iterator[tuple[np.ndarray, PackPosition]]:
        if self.packing is None:
            return self._token_rows(start.doc)
        return pack_documents(self._documents(start.doc), self.packing, start=start)

    # -------------------------------------------------------------- iteration

    def __iter__(self) -> TokenSource:
        return self

    def __next__(self) -> np.ndarray:
        """The next context `[context_size]` (int32); loops over epochs unless `loop=False`."""
        restarted = False
        while True:
            if self._iter is None:
                self._iter = self._contexts(self._position)
            try:
                context, self._position = next(self._iter)
                return context
            except StopIteration:
                self._iter = None
                if not self.loop:
                    raise
                if restarted:
                    raise ConfigError(
                        "the dataset yields no complete context: every document is shorter "
                        f"than context_size={self.context_size} (or the dataset is empty)."
                    ) from None
                restarted = True
                self._epoch += 1
                self._position = PackPosition()
                warnings.warn(
                    f"all rows of the dataset were used; starting epoch {self._epoch}.",
                    stacklevel=2,
                )

    def next_batch(self, n: int) -> np.ndarray:
        """`n` contexts stacked: `[n, context_size]` int32."""
        return np.stack([next(self) for _ in range(n)])

    # -------------------------------------------------------------- position

    @property
    def epoch(self) -> int:
        return self._epoch

    def state(self) -> dict[str, Any]:
        """Where the stream stands (JSON-serialisable): epoch, row, offset inside the row."""
        return {"epoch": self._epoch, **self._position.to_dict()}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a `state()`: the next context is the one that followed it."""
        self._epoch = int(state.get("epoch", 0))
        self._position = PackPosition.from_dict(dict(state))
        self._iter = None
