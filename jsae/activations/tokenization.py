"""Text -> tokens -> fixed-length contexts, exactly as SAELens packs them.

Packing rules (SAELens `concat_and_batch_sequences`, reproduced token for token):

* Concatenation (default): documents stream into a running context of `context_size` tokens.
  A new context starts with `begin_batch_token` (unless its first token already is it); a new
  document starts with `begin_sequence_token` (same rule); a document appended to a non-empty
  context is preceded by `sequence_separator_token` (same rule). Long documents spill over
  into the next context, which gets only the begin-batch token. The final partial context is
  dropped.
* `disable_concat_sequences=True`: one document per context. When a begin-batch token is set
  and no begin-sequence token, it doubles as the begin-sequence token and is prepended to
  documents of at least `context_size - 1` tokens; documents shorter than `context_size`
  (after that) are skipped and longer ones truncated.

The packer is a small state machine (`PackPosition`: which document, which offset inside it,
whether the document's start is still pending), so a stream of contexts can be stopped and
resumed exactly, which SAELens cannot do (it re-reads the dataset from the start).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jsae.errors import ConfigError

SpecialToken = int | str | None  # an id, "bos", "eos", "sep", or None

TOKEN_DTYPE = np.int32
_TOKEN_ALIASES = {"bos": "bos_token_id", "eos": "eos_token_id", "sep": "sep_token_id"}
# Tokenizer attributes whose ids count as special tokens (SAELens `get_special_token_ids`).
_SPECIAL_TOKEN_ATTRS = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
)


# ------------------------------------------------------------------------------ special tokens


def bos_token_id(tokenizer: Any) -> int | None:
    """The tokenizer's BOS id, falling back to EOS as TransformerLens does (GPT-2 style)."""
    if tokenizer is None:
        return None
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos if bos is not None else getattr(tokenizer, "eos_token_id", None)


def resolve_special_token(token: SpecialToken, tokenizer: Any, *, what: str) -> int | None:
    """An int id for a configured token: an int is kept, "bos"/"eos"/"sep" read the tokenizer."""
    if token is None or (isinstance(token, str) and token.lower() == "none"):
        return None
    if isinstance(token, bool):
        raise ConfigError(f"{what} must be a token id, 'bos', 'eos', 'sep' or None, got {token!r}.")
    if isinstance(token, int | np.integer):
        return int(token)
    if isinstance(token, str) and token.isdigit():
        return int(token)
    key = str(token).lower()
    if key not in _TOKEN_ALIASES:
        raise ConfigError(
            f"{what}={token!r} is not a token id or one of 'bos', 'eos', 'sep', None."
        )
    if tokenizer is None:
        raise ConfigError(
            f"{what}={token!r} needs a tokenizer to resolve; the model has none. Give a token id."
        )
    value = (
        bos_token_id(tokenizer) if key == "bos" else getattr(tokenizer, _TOKEN_ALIASES[key], None)
    )
    if value is None:
        raise ConfigError(
            f"{what}={token!r} but the tokenizer has no {key} token; give a token id or None."
        )
    return int(value)


def special_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the tokenizer's structural special tokens (BOS, EOS, PAD, SEP, decoder start).

    The set SAELens excludes with `exclude_special_tokens=True`; chat-template tokens
    registered as "additional special tokens" are deliberately not included.
    """
    ids = set()
    for attr in _SPECIAL_TOKEN_ATTRS:
        value = getattr(tokenizer, attr, None)
        if value is not None:
            ids.add(int(value))
    return sorted(ids)


def resolve_exclude_special_tokens(value: Any, tokenizer: Any) -> np.ndarray | None:
    """`exclude_special_tokens` (False / True / list of ids) as an int array, or None."""
    if value is None or value is False:
        return None
    if value is True:
        if tokenizer is None:
            raise ConfigError(
                "exclude_special_tokens=True needs the model's tokenizer; give a list of ids."
            )
        return np.asarray(special_token_ids(tokenizer), TOKEN_DTYPE)
    try:
        return np.asarray([int(v) for v in value], TOKEN_DTYPE)
    except (TypeError, ValueError):
        raise ConfigError(
            f"exclude_special_tokens must be True, False or a list of token ids, got {value!r}."
        ) from None


# ------------------------------------------------------------------------------ tokenizing


def tokenizer_prepends_bos(tokenizer: Any) -> bool:
    """Whether encoding adds a BOS by itself (Llama/Gemma style), as TransformerLens tests it."""
    return len(tokenizer("")["input_ids"]) > 0


def tokenize_texts(
    tokenizer: Any, texts: Sequence[str], *, keep_bos: bool = False
) -> list[np.ndarray]:
    """Token ids of each text, one 1-D int32 array per text, never truncated.

    With `keep_bos=False` (what SAELens's activation store does through TransformerLens's
    `to_tokens(prepend_bos=False)`) a BOS the tokenizer adds by itself is removed, so the
    packer decides where BOS goes. `keep_bos=True` keeps the tokenizer's own special tokens
    (what SAELens's PretokenizeRunner does with `tokenizer.encode`).
    """
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
    out = [np.asarray(ids, TOKEN_DTYPE) for ids in encoded]
    if not keep_bos and tokenizer_prepends_bos(tokenizer):
        bos = getattr(tokenizer, "bos_token_id", None)
        out = [ids[1:] if len(ids) and ids[0] == bos else ids for ids in out]
    return out


# ------------------------------------------------------------------------------ packing


@dataclass(frozen=True)
class PackPosition:
    """Where the packer stands between two contexts.

    `doc` is the index of the next document to read tokens from, `offset` the next token in
    it, `doc_start` whether that document's start is still pending (its begin-sequence or
    separator token not yet emitted).
    """

    doc: int = 0
    offset: int = 0
    doc_start: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"doc": self.doc, "offset": self.offset, "doc_start": self.doc_start}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PackPosition:
        return cls(int(data["doc"]), int(data["offset"]), bool(data["doc_start"]))


@dataclass(frozen=True)
class PackingConfig:
    """Which tokens the packer inserts; ids already resolved against the tokenizer."""

    context_size: int
    begin_batch_token_id: int | None = None
    begin_sequence_token_id: int | None = None
    sequence_separator_token_id: int | None = None
    disable_concat_sequences: bool = False

    def __post_init__(self) -> None:
        if self.context_size <= 0:
            raise ConfigError(f"context_size must be positive, got {self.context_size}.")
        if (
            not self.disable_concat_sequences
            and self.begin_batch_token_id is not None
            and self.context_size == 1
        ):
            raise ConfigError(
                "context_size=1 leaves no room for text after the begin-batch token; use a "
                "longer context or no begin-batch token (prepend_bos=False)."
            )


def _add_tokens(
    cfg: PackingConfig,
    batch: list[np.ndarray] | None,
    batch_len: int,
    tokens: np.ndarray,
    offset: int,
    doc_start: bool,
) -> tuple[list[np.ndarray], int, int, bool]:
    """One step of SAELens's `_add_tokens_to_batch`: (pieces, length, new offset, doc_start)."""
    ctx = cfg.context_size
    prefix: list[int] = []
    pending = False
    first = int(tokens[offset])
    bs, bb, sep = (
        cfg.begin_sequence_token_id,
        cfg.begin_batch_token_id,
        cfg.sequence_separator_token_id,
    )
    if doc_start and bs is not None and first != bs:
        prefix.insert(0, bs)
        pending = True
        first = bs
    if batch is None:
        if bb is not None and first != bb:
            prefix.insert(0, bb)
        needed = max(ctx - len(prefix), 0)
        part = tokens[offset : offset + needed]
        pieces = [np.asarray(prefix[:ctx], TOKEN_DTYPE), part]
        length = min(len(prefix), ctx) + len(part)
        return pieces, length, offset + needed, pending and len(prefix) > ctx
    if sep is not None and first != sep:
        prefix.insert(0, sep)
    needed = max(ctx - batch_len - len(prefix), 0)
    prefix_needed = max(ctx - batch_len, 0)
    part = tokens[offset : offset + needed]
    head = prefix[:prefix_needed]
    batch = [*batch, np.asarray(head, TOKEN_DTYPE), part]
    return (
        batch,
        batch_len + len(head) + len(part),
        offset + needed,
        pending and len(prefix) > prefix_needed,
    )


def pack_documents(
    docs: Iterable[np.ndarray],
    cfg: PackingConfig,
    *,
    start: PackPosition = PackPosition(),
) -> Iterator[tuple[np.ndarray, PackPosition]]:
    """Contexts `[context_size]` from documents, each with the position right after it.

    `docs` must yield the documents from index `start.doc` on (the caller skips the earlier
    ones); restarting from a yielded position continues the stream exactly.
    """
    ctx = cfg.context_size
    if cfg.disable_concat_sequences:
        bs = cfg.begin_sequence_token_id
        if cfg.begin_batch_token_id is not None and bs is None:
            bs = cfg.begin_batch_token_id
        for i, seq in enumerate(docs, start=start.doc):
            seq = np.asarray(seq, TOKEN_DTYPE)
            if len(seq) == 0:
                continue
            if bs is not None and len(seq) >= ctx - 1 and seq[0] != bs:
                seq = np.concatenate([np.asarray([bs], TOKEN_DTYPE), seq[: ctx - 1]])
            if len(seq) >= ctx:
                yield seq[:ctx].copy(), PackPosition(i + 1, 0, True)
        return

    batch: list[np.ndarray] | None = None
    batch_len = 0
    first_doc = True
    for i, tokens in enumerate(docs, start=start.doc):
        tokens = np.asarray(tokens, TOKEN_DTYPE)
        if tokens.ndim != 1:
            raise ConfigError(f"document {i} has token shape {tokens.shape}; expected 1-D.")
        offset, doc_start = (start.offset, start.doc_start) if first_doc else (0, True)
        first_doc = False
        while len(tokens) - offset > 0:
            batch, batch_len, offset, doc_start = _add_tokens(
                cfg, batch, batch_len, tokens, offset, doc_start
            )
            if batch_len == ctx:
                context = np.concatenate(batch)
                batch, batch_len = None, 0
                if offset < len(tokens):
                    position = PackPosition(i, offset, doc_start)
                else:
                    position = PackPosition(i + 1, 0, True)
                yield context, position


def concat_and_batch_sequences(
    tokens_iterator: Iterable[Any],
    context_size: int,
    begin_batch_token_id: int | None = None,
    begin_sequence_token_id: int | None = None,
    sequence_separator_token_id: int | None = None,
    disable_concat_sequences: bool = False,
) -> Iterator[np.ndarray]:
    """SAELens's packing function, same name and arguments, on numpy arrays (contexts only)."""
    cfg = PackingConfig(
        context_size,
        begin_batch_token_id,
        begin_sequence_token_id,
        sequence_separator_token_id,
        disable_concat_sequences,
    )
    for context, _ in pack_documents((np.asarray(t) for t in tokens_iterator), cfg):
        yield context
