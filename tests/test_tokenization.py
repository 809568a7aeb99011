"""TokenSource beyond parity: resuming, per-process shares, dataset formats, bad input."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from jsae.activations import TokenSource, load_dataset_any
from jsae.activations.tokenization import PackingConfig, pack_documents, resolve_special_token
from jsae.activations.toy import make_corpus, make_tokenizer, save_text_dataset
from jsae.errors import ConfigError


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return make_corpus(60, seed=3)


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    return make_tokenizer(corpus, tmp_path_factory.mktemp("tok"), style="gpt2")


@pytest.fixture(scope="module")
def text_path(corpus, tmp_path_factory) -> Path:
    return save_text_dataset(corpus, tmp_path_factory.mktemp("ds") / "text", fmt="disk")


def _source(path, tokenizer, **kw) -> TokenSource:
    kw.setdefault("context_size", 16)
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return TokenSource(path, tokenizer, read_batch_rows=4, **kw)


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("kind", ["text", "text_no_concat", "tokens"])
def test_restore_continues_the_stream_exactly(
    tokenizer, text_path, tmp_path, kind: str, streaming: bool
) -> None:
    if kind == "tokens":
        rows = np.random.default_rng(0).integers(0, 400, (30, 16))
        path = tmp_path / "tokens"
        datasets.Dataset.from_dict({"input_ids": rows.tolist()}).save_to_disk(str(path))
        kw = {}
    else:
        path = text_path
        kw = {"disable_concat_sequences": kind == "text_no_concat"}
    reference = _source(path, tokenizer, streaming=streaming, **kw)
    n_per_epoch = sum(1 for _ in _source(path, tokenizer, streaming=streaming, loop=False, **kw))
    assert n_per_epoch > 5
    with pytest.warns(UserWarning, match="epoch 1"):
        stream = [next(reference) for _ in range(n_per_epoch + 7)]  # crosses into epoch 1
    assert np.array_equal(stream[n_per_epoch], stream[0])
    for cut in (1, 3, n_per_epoch - 1, n_per_epoch + 2):
        first = _source(path, tokenizer, streaming=streaming, **kw)
        with pytest.warns(UserWarning) if cut >= n_per_epoch else contextlib.nullcontext():
            for _ in range(cut):
                next(first)
        state = json.loads(json.dumps(first.state()))  # must survive JSON
        second = _source(path, tokenizer, streaming=streaming, **kw)
        second.restore(state)
        with pytest.warns(UserWarning) if cut < n_per_epoch else contextlib.nullcontext():
            rest = [next(second) for _ in range(n_per_epoch + 7 - cut)]
        for a, b in zip(rest, stream[cut:], strict=True):
            assert np.array_equal(a, b)


def test_pack_positions_resume_mid_document() -> None:
    rng = np.random.default_rng(1)
    docs = [rng.integers(5, 50, int(rng.integers(1, 30))) for _ in range(40)]
    cfg = PackingConfig(
        context_size=6,
        begin_batch_token_id=1,
        begin_sequence_token_id=2,
        sequence_separator_token_id=3,
    )
    full = list(pack_documents(docs, cfg))
    assert any(pos.offset > 0 for _, pos in full), "some context must end inside a document"
    for k in range(len(full) - 1):
        pos = full[k][1]
        rest = list(pack_documents(docs[pos.doc :], cfg, start=pos))
        assert len(rest) == len(full) - k - 1
        assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(rest, full[k + 1 :], strict=True))


@pytest.mark.parametrize("streaming", [False, True])
def test_processes_read_disjoint_shares_covering_the_data(tmp_path, streaming: bool) -> None:
    rows = np.arange(24 * 8).reshape(24, 8)  # every row unique
    path = tmp_path / "tokens"
    datasets.Dataset.from_dict({"tokens": rows.tolist()}).save_to_disk(str(path))
    seen = []
    for index in range(3):
        src = TokenSource(
            path,
            None,
            context_size=8,
            loop=False,
            streaming=streaming,
            process_index=index,
            process_count=3,
        )
        mine = [tuple(c) for c in src]
        assert len(mine) == 8
        seen.append(set(mine))
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert set.union(*seen) == {tuple(r) for r in rows}


@pytest.mark.parametrize("fmt", ["disk", "jsonl", "parquet"])
def test_dataset_formats_give_the_same_contexts(corpus, tokenizer, tmp_path, fmt: str) -> None:
    path = save_text_dataset(
        corpus, tmp_path / f"data.{fmt}" if fmt != "disk" else tmp_path / "d", fmt=fmt
    )
    baseline = list(_source(datasets.Dataset.from_dict({"text": corpus}), tokenizer, loop=False))
    got = list(_source(path, tokenizer, loop=False))
    assert len(got) == len(baseline) > 0
    assert all(np.array_equal(a, b) for a, b in zip(got, baseline, strict=True))


def test_shuffle_seed_reorders_rows_reproducibly(tmp_path) -> None:
    rows = np.arange(20 * 4).reshape(20, 4)
    ds = datasets.Dataset.from_dict({"tokens": rows.tolist()})
    plain = [
        tuple(c)
        for c in TokenSource(ds, context_size=4, loop=False, process_index=0, process_count=1)
    ]
    a = [
        tuple(c)
        for c in TokenSource(
            ds, context_size=4, loop=False, shuffle_seed=5, process_index=0, process_count=1
        )
    ]
    b = [
        tuple(c)
        for c in TokenSource(
            ds, context_size=4, loop=False, shuffle_seed=5, process_index=0, process_count=1
        )
    ]
    assert a == b and a != plain and sorted(a) == sorted(plain)


# ------------------------------------------------------------------------------ bad input


def test_dataset_without_text_or_token_column_names_its_columns(tokenizer) -> None:
    ds = datasets.Dataset.from_dict({"content": ["a b c"], "label": [1]})
    with pytest.raises(ConfigError, match=r"no text or token column.*\['content', 'label'\]"):
        TokenSource(ds, tokenizer, context_size=4, process_index=0, process_count=1)
    with pytest.raises(ConfigError, match=r"no column 'body'.*'content'"):
        TokenSource(
            ds, tokenizer, context_size=4, column_name="body", process_index=0, process_count=1
        )
    # naming the column is the fix
    src = TokenSource(
        ds,
        tokenizer,
        context_size=2,
        column_name="content",
        process_index=0,
        process_count=1,
        loop=False,
    )
    assert len(list(src)) >= 1


def test_text_dataset_without_tokenizer_is_refused() -> None:
    ds = datasets.Dataset.from_dict({"text": ["hello"]})
    with pytest.raises(ConfigError, match="no tokenizer"):
        TokenSource(ds, None, context_size=4, process_index=0, process_count=1)


def test_short_pretokenized_rows_are_refused_with_the_row_number() -> None:
    ds = datasets.Dataset.from_dict({"input_ids": [[1] * 8, [1] * 8, [1] * 5]})
    src = TokenSource(ds, None, context_size=8, loop=False, process_index=0, process_count=1)
    with pytest.raises(ConfigError, match=r"row 2 has 5 tokens.*context_size=8"):
        list(src)


def test_dataset_with_no_full_context_is_refused(tokenizer) -> None:
    ds = datasets.Dataset.from_dict({"text": ["a b"] * 3})
    src = TokenSource(
        ds,
        tokenizer,
        context_size=64,
        disable_concat_sequences=True,
        process_index=0,
        process_count=1,
    )
    with pytest.raises(ConfigError, match="no complete context"):
        next(src)


def test_unknown_dataset_names_the_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError, match="'nobody/no-such-dataset' is neither a local path"):
        load_dataset_any("nobody/no-such-dataset")
    with pytest.raises(ConfigError, match="neither a local path"):
        load_dataset_any(str(tmp_path / "missing-dir"))


def test_empty_dataset_and_bad_tokens_are_refused(tokenizer, tmp_path) -> None:
    with pytest.raises(ConfigError, match="empty"):
        TokenSource(
            datasets.Dataset.from_dict({"text": []}),
            tokenizer,
            context_size=4,
            process_index=0,
            process_count=1,
        )
    with pytest.raises(ConfigError, match="not a token id"):
        resolve_special_token("cls", tokenizer, what="sequence_separator_token")
    with pytest.raises(ConfigError, match="no sep token"):
        resolve_special_token("sep", tokenizer, what="sequence_separator_token")
    with pytest.raises(ConfigError, match="context_size=1"):
        PackingConfig(context_size=1, begin_batch_token_id=0)
    with pytest.raises(ConfigError, match="cannot tell the format"):
        (tmp_path / "x.docx").write_text("x")
        load_dataset_any(tmp_path / "x.docx")
    with pytest.raises(ConfigError, match="no split 'validation'"):
        load_dataset_any(
            datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})}),
            split="validation",
        )
