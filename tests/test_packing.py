"""Token packing parity with SAELens 6.x, run on identical token streams and datasets.

Three SAELens entry points are the oracle, each run in the reference environment:
`concat_and_batch_sequences` on raw token lists, `PretokenizeRunner` on a text dataset, and
`ActivationsStore.get_batch_tokens` (TransformerLens tokenization + packing) on the same
dataset; jsae must produce the same contexts, token for token, in the same order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_reference
from transformers import AutoTokenizer

from jsae.activations import TokenSource, concat_and_batch_sequences, pretokenize_dataset
from jsae.activations.tokenization import special_token_ids
from jsae.activations.toy import make_corpus, make_tokenizer, save_text_dataset

BOS, SEP, EOS = 1, 2, 3

RAW_CONFIGS = [
    dict(
        context_size=16,
        begin_batch_token_id=BOS,
        begin_sequence_token_id=None,
        sequence_separator_token_id=BOS,
        disable_concat_sequences=False,
    ),
    dict(
        context_size=16,
        begin_batch_token_id=None,
        begin_sequence_token_id=None,
        sequence_separator_token_id=None,
        disable_concat_sequences=False,
    ),
    dict(
        context_size=7,
        begin_batch_token_id=BOS,
        begin_sequence_token_id=SEP,
        sequence_separator_token_id=EOS,
        disable_concat_sequences=False,
    ),
    dict(
        context_size=5,
        begin_batch_token_id=None,
        begin_sequence_token_id=SEP,
        sequence_separator_token_id=None,
        disable_concat_sequences=False,
    ),
    dict(
        context_size=2,
        begin_batch_token_id=BOS,
        begin_sequence_token_id=SEP,
        sequence_separator_token_id=SEP,
        disable_concat_sequences=False,
    ),
    dict(
        context_size=3,
        begin_batch_token_id=BOS,
        begin_sequence_token_id=None,
        sequence_separator_token_id=EOS,
        disable_concat_sequences=False,
    ),
    dict(
        context_size=12,
        begin_batch_token_id=BOS,
        begin_sequence_token_id=None,
        sequence_separator_token_id=BOS,
        disable_concat_sequences=True,
    ),
    dict(
        context_size=12,
        begin_batch_token_id=BOS,
        begin_sequence_token_id=SEP,
        sequence_separator_token_id=None,
        disable_concat_sequences=True,
    ),
    dict(
        context_size=12,
        begin_batch_token_id=None,
        begin_sequence_token_id=None,
        sequence_separator_token_id=None,
        disable_concat_sequences=True,
    ),
]

PRETOKENIZE_CONFIGS = [
    dict(
        context_size=16,
        begin_batch_token="bos",
        begin_sequence_token=None,
        sequence_separator_token="bos",
        disable_concat_sequences=False,
        pretokenize_batch_size=1000,
    ),
    dict(
        context_size=16,
        begin_batch_token="bos",
        begin_sequence_token=None,
        sequence_separator_token="bos",
        disable_concat_sequences=False,
        pretokenize_batch_size=7,
    ),
    dict(
        context_size=24,
        begin_batch_token=None,
        begin_sequence_token="eos",
        sequence_separator_token="eos",
        disable_concat_sequences=False,
        pretokenize_batch_size=13,
    ),
    dict(
        context_size=20,
        begin_batch_token="bos",
        begin_sequence_token=None,
        sequence_separator_token=None,
        disable_concat_sequences=True,
        pretokenize_batch_size=1000,
    ),
]

STORE_CONFIGS = [
    dict(
        context_size=16,
        prepend_bos=True,
        sequence_separator_token="bos",
        disable_concat_sequences=False,
        pretokenized=False,
        tokenizer="llama",
    ),
    dict(
        context_size=11,
        prepend_bos=False,
        sequence_separator_token="eos",
        disable_concat_sequences=False,
        pretokenized=False,
        tokenizer="llama",
    ),
    dict(
        context_size=16,
        prepend_bos=True,
        sequence_separator_token="bos",
        disable_concat_sequences=False,
        pretokenized=False,
        tokenizer="gpt2",
    ),
    dict(
        context_size=33,
        prepend_bos=False,
        sequence_separator_token="eos",
        disable_concat_sequences=False,
        pretokenized=False,
        tokenizer="gpt2",
    ),
    dict(
        context_size=9,
        prepend_bos=True,
        sequence_separator_token=None,
        disable_concat_sequences=False,
        pretokenized=False,
        tokenizer="gpt2",
    ),
    dict(
        context_size=12,
        prepend_bos=True,
        sequence_separator_token=7,
        disable_concat_sequences=False,
        pretokenized=False,
        tokenizer="gpt2",
    ),
    dict(
        context_size=20,
        prepend_bos=True,
        sequence_separator_token="bos",
        disable_concat_sequences=True,
        pretokenized=False,
        tokenizer="gpt2",
    ),
    dict(
        context_size=16,
        prepend_bos=True,
        sequence_separator_token="bos",
        disable_concat_sequences=False,
        pretokenized=True,
        tokenizer="gpt2",
    ),
]


def _name(i: int, cfg: dict) -> str:
    return f"c{i}"


@pytest.fixture(scope="module")
def packing_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    root = tmp_path_factory.mktemp("packing")
    rng = np.random.default_rng(0)
    docs = []
    for i in range(60):
        doc = rng.integers(4, 50, int(rng.integers(0, 40))).tolist()
        if doc and i % 5 == 0:
            doc[0] = BOS
        if doc and i % 7 == 0:
            doc[0] = SEP
        docs.append(doc)
    corpus = make_corpus(80, seed=1)
    corpus[3] = ""  # an empty document
    tok_dirs = {}
    for style in ("gpt2", "llama"):
        tok_dirs[style] = str(root / f"tok_{style}")
        make_tokenizer(corpus, tok_dirs[style], style=style)
    text_file = save_text_dataset(corpus, root / "corpus.jsonl", fmt="jsonl")
    tokens_rows = [rng.integers(0, 500, 20).tolist() for _ in range(25)]
    tokens_file = root / "tokens.jsonl"
    tokens_file.write_text("".join(json.dumps({"tokens": r}) + "\n" for r in tokens_rows))
    spec = {
        "raw": {
            "docs": docs,
            "configs": [{"name": _name(i, c), **c} for i, c in enumerate(RAW_CONFIGS)],
        },
        "pretokenize": {
            "tokenizer": tok_dirs["llama"],
            "data_files": str(text_file),
            "configs": [{"name": _name(i, c), **c} for i, c in enumerate(PRETOKENIZE_CONFIGS)],
        },
        "store": {
            "tokenizers": tok_dirs,
            "data_files": str(text_file),
            "tokens_data_files": str(tokens_file),
            "configs": [{"name": _name(i, c), **c} for i, c in enumerate(STORE_CONFIGS)],
        },
        "special": {"tokenizers": [tok_dirs["gpt2"], tok_dirs["llama"]]},
    }
    (root / "inputs.json").write_text(json.dumps(spec))
    run_reference("saelens_packing.py", root)
    with np.load(root / "outputs.npz") as f:
        outputs = {k: f[k] for k in f.files}
    return spec, outputs, root


@pytest.mark.parametrize("i", range(len(RAW_CONFIGS)))
def test_raw_packing_matches_saelens(packing_case, i: int) -> None:
    spec, outputs, _ = packing_case
    cfg = RAW_CONFIGS[i]
    ours = list(concat_and_batch_sequences(iter(spec["raw"]["docs"]), **cfg))
    expected = outputs[f"raw/c{i}"]
    assert len(expected) > 0
    assert np.array_equal(np.stack(ours) if ours else np.zeros((0, cfg["context_size"])), expected)


@pytest.mark.parametrize("i", range(len(PRETOKENIZE_CONFIGS)))
def test_pretokenize_matches_saelens_runner(packing_case, i: int) -> None:
    spec, outputs, root = packing_case
    cfg = dict(PRETOKENIZE_CONFIGS[i])
    tokenizer = AutoTokenizer.from_pretrained(spec["pretokenize"]["tokenizer"])
    ds = pretokenize_dataset(
        spec["pretokenize"]["data_files"],
        tokenizer,
        batch_size=cfg.pop("pretokenize_batch_size"),
        save_path=root / f"pretok_{i}",
        **cfg,
    )
    ours = np.asarray(ds.with_format("numpy")["input_ids"])
    expected = outputs[f"pretokenize/c{i}"]
    assert len(expected) > 0
    assert np.array_equal(ours, expected)
    meta = json.loads((root / f"pretok_{i}" / "sae_lens.json").read_text())
    assert meta["context_size"] == cfg["context_size"]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("i", range(len(STORE_CONFIGS)))
def test_token_source_matches_saelens_activation_store(
    packing_case, i: int, streaming: bool
) -> None:
    spec, outputs, _ = packing_case
    cfg = dict(STORE_CONFIGS[i])
    pretokenized = cfg.pop("pretokenized")
    tokenizer = AutoTokenizer.from_pretrained(spec["store"]["tokenizers"][cfg.pop("tokenizer")])
    path = spec["store"]["tokens_data_files" if pretokenized else "data_files"]
    source = TokenSource(
        path,
        tokenizer,
        streaming=streaming,
        loop=False,
        process_index=0,
        process_count=1,
        read_batch_rows=5,
        **cfg,
    )
    if pretokenized:
        with pytest.warns(RuntimeWarning, match="discarded"):
            ours = list(source)
    else:
        ours = list(source)
    expected = outputs[f"store/c{i}"]
    assert len(expected) > 0
    assert np.array_equal(np.stack(ours), expected)


def test_special_token_ids_match_saelens(packing_case) -> None:
    spec, outputs, _ = packing_case
    for i, path in enumerate(spec["special"]["tokenizers"]):
        tokenizer = AutoTokenizer.from_pretrained(path)
        assert special_token_ids(tokenizer) == outputs[f"special/{i}"].tolist()
