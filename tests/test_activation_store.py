"""ActivationStore on a real (tiny, random) Flax GPT-2: right rows, mixing, resume, bad input."""

from __future__ import annotations

import json

import datasets
import jax
import numpy as np
import pytest
from helpers import matching_rows
from transformers import GPT2Config

import jsae.models
from jsae.activations import TokenSource
from jsae.activations.store import ActivationStore
from jsae.activations.toy import make_corpus, make_tokenizer
from jsae.errors import ConfigError, ShapeError

if not hasattr(jsae.models, "HookedModel"):
    pytest.skip("jsae.models.HookedModel is not available yet", allow_module_level=True)
HookedModel = jsae.models.HookedModel

CTX = 16
RESID = "blocks.0.hook_resid_post"
Z = "blocks.1.attn.hook_z"


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return make_corpus(40, seed=5)


@pytest.fixture(scope="module")
def model(corpus, tmp_path_factory):
    tok = make_tokenizer(corpus, tmp_path_factory.mktemp("tok"), style="gpt2")
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=len(tok), n_positions=32)
    return HookedModel.from_config(cfg, seed=0, tokenizer=tok)


def _source(model, corpus, **kw) -> TokenSource:
    kw = {"context_size": CTX, "process_index": 0, "process_count": 1, **kw}
    return TokenSource(datasets.Dataset.from_dict({"text": corpus}), model.tokenizer, **kw)


def _reference(model, corpus, n_contexts: int, names, **kw) -> tuple[np.ndarray, dict]:
    """The first n contexts of the same stream and the model's activations on them."""
    tokens = _source(model, corpus, **kw).next_batch(n_contexts)
    _, cache = model.run_with_cache(tokens, list(names))
    return tokens, {k: np.asarray(v) for k, v in cache.items()}


def test_batches_are_shuffled_model_activations(model, corpus) -> None:
    # BOS rows are identical in every context (position 0 sees only itself): leave them out
    store = ActivationStore(
        model,
        _source(model, corpus),
        hook_names=RESID,
        batch_size=16,
        store_batch_size_prompts=2,
        n_batches_in_buffer=4,
        seed=1,
        exclude_special_tokens=True,
    )
    batches = [np.asarray(next(store)) for _ in range(6)]
    assert all(b.shape == (16, 32) for b in batches)
    _, cache = _reference(model, corpus, 2 * 4 * 3, [RESID])
    ref = cache[RESID].reshape(-1, 32)
    idx = matching_rows(np.concatenate(batches), ref)
    assert len(set(idx.tolist())) == len(idx), "no row served twice"
    first = idx[:16] // CTX
    assert len(set(first.tolist())) >= 4, "a batch mixes tokens of several contexts"
    assert not np.array_equal(np.sort(idx[:16]), idx[:16]), "rows are shuffled"
    store.close()


def test_several_hooks_share_one_forward_and_one_shuffle(model, corpus) -> None:
    store = ActivationStore(
        model,
        _source(model, corpus),
        hook_names=[RESID, Z, "hook_embed"],
        batch_size=8,
        store_batch_size_prompts=2,
        n_batches_in_buffer=2,
        prefetch=0,
    )
    assert store.d_in == {RESID: 32, Z: 32, "hook_embed": 32}
    batch = next(store)
    _, cache = _reference(model, corpus, 4, [RESID, Z, "hook_embed"])
    idx = matching_rows(np.asarray(batch[RESID]), cache[RESID].reshape(-1, 32))
    for h in (Z, "hook_embed"):  # the same tokens, row for row, at every hook
        np.testing.assert_allclose(batch[h], cache[h].reshape(-1, 32)[idx], atol=1e-5)


def test_head_index_seqpos_slice_and_special_tokens(model) -> None:
    bos = model.tokenizer.bos_token_id
    short_docs = make_corpus(60, seed=6, max_sentences=1)  # many BOS separators inside contexts
    store = ActivationStore(
        model,
        _source(model, short_docs),
        hook_names=Z,
        hook_head_index=2,
        seqpos_slice=(1, None, 2),
        exclude_special_tokens=True,
        batch_size=8,
        store_batch_size_prompts=4,
        n_batches_in_buffer=2,
        prefetch=0,
    )
    assert store.d_in == {Z: 8}
    rows = np.concatenate([np.asarray(next(store)) for _ in range(3)])
    tokens, cache = _reference(model, short_docs, 16, [Z])
    assert (tokens[:, 1::2] == bos).any(), "the test data must contain BOS at kept positions"
    ref = cache[Z][:, 1::2, 2]  # [16, 8 positions, d_head]
    idx = matching_rows(rows, ref.reshape(-1, 8))
    positions = 1 + 2 * (idx % 8)
    contexts = idx // 8
    assert (tokens[contexts, positions] != bos).all(), "special tokens are excluded"


@pytest.mark.parametrize("include_buffer", [True, False])
def test_state_restore_continues_the_stream(model, corpus, include_buffer: bool) -> None:
    kw = dict(
        hook_names=[RESID, "blocks.1.hook_mlp_out"],
        batch_size=8,
        store_batch_size_prompts=2,
        n_batches_in_buffer=3,
        seed=7,
    )
    a = ActivationStore(model, _source(model, corpus), **kw)
    for _ in range(5):
        next(a)
    state = a.state(include_buffer=include_buffer)
    if not include_buffer:
        json.dumps(state)  # the position alone is plain JSON (checkpoint metadata)
    expected = [next(a) for _ in range(12)]
    b = ActivationStore(model, _source(model, corpus), **kw)
    b.restore(state)
    got = [next(b) for _ in range(12)]
    if include_buffer:
        for x, y in zip(expected, got, strict=True):
            for h in x:
                assert np.array_equal(np.asarray(x[h]), np.asarray(y[h]))
    else:
        # the buffered rows are dropped; the data stream continues where it was
        ref_rows = {tuple(np.round(np.asarray(r), 5)) for x in expected for r in x[RESID]}
        got_rows = {tuple(np.round(np.asarray(r), 5)) for x in got for r in x[RESID]}
        assert got_rows and len(got_rows & ref_rows) > 0
        first_state = ActivationStore(model, _source(model, corpus), **kw).state()
        assert state["source"] != first_state["source"]
    a.close()
    b.close()


def test_hook_views_resume_where_each_consumer_stood(model, corpus) -> None:
    """Each hook's view checkpointed at its own position (one ahead of the store's oldest
    checkpoint, one behind it) resumes on a new store with exactly the batches it would
    have read uninterrupted, without the model running again over the batches consumed."""
    hooks = [RESID, "blocks.1.hook_mlp_out"]
    kw = dict(hook_names=hooks, batch_size=8, store_batch_size_prompts=2, n_batches_in_buffer=2)

    def views_of(store):
        return store.hook_iterators(max_lag=8)  # one thread reads both: room to run apart

    def read(view, n):
        return [np.asarray(next(view)) for _ in range(n)]

    def counting_forwards(store):
        store.forwards, step = 0, store._step

        def counted(*args):
            store.forwards += 1
            return step(*args)

        store._step = counted
        return store

    full_store = counting_forwards(ActivationStore(model, _source(model, corpus), **kw))
    full = views_of(full_store)
    expected = {h: [] for h in hooks}
    for turn in range(4):  # in turns: a view cannot run more than max_lag ahead of the other
        for h in hooks:
            expected[h] += read(full[h], 3)
        if turn == 1:
            forwards_to_6 = full_store.forwards

    first = views_of(ActivationStore(model, _source(model, corpus), **kw))
    read(first[hooks[0]], 6)
    read(first[hooks[1]], 3)
    behind = first[hooks[1]].state(include_buffer=True)  # store at 6, consumed 3
    assert (behind["produced"], behind["consumed"], len(behind["pending"])) == (6, 3, 3)
    read(first[hooks[0]], 2)
    ahead = first[hooks[0]].state(include_buffer=True)  # store at 8, consumed 8
    assert (ahead["produced"], ahead["consumed"], len(ahead["pending"])) == (8, 8, 0)

    store = counting_forwards(ActivationStore(model, _source(model, corpus), **kw))
    resumed = views_of(store)
    resumed[hooks[0]].restore(ahead)
    resumed[hooks[1]].restore(behind)
    got = {hooks[0]: read(resumed[hooks[0]], 4), hooks[1]: read(resumed[hooks[1]], 9)}
    for h, start in ((hooks[0], 8), (hooks[1], 3)):
        for want, have in zip(expected[h][start:], got[h], strict=True):
            assert np.array_equal(want, have)
    # the store resumed after batch 6 of the stream: the model ran only for batches 7-12
    assert 0 < store.forwards == full_store.forwards - forwards_to_6

    with pytest.raises(ConfigError, match="restore the views of every hook before reading"):
        resumed[hooks[0]].restore(ahead)
    other = views_of(ActivationStore(model, _source(model, corpus), **kw))
    with pytest.raises(ConfigError, match=r"this checkpoint is of the view of 'blocks\.0"):
        other[hooks[1]].restore(ahead)
    single_store = ActivationStore(model, _source(model, corpus), **kw).state(include_buffer=True)
    with pytest.raises(ConfigError, match="position of a single activation store"):
        other[hooks[1]].restore(single_store)
    # One hook's SAE alone, on a store of that hook: its stream is the same, read again
    alone_kw = {**kw, "hook_names": [hooks[1]]}
    alone = views_of(ActivationStore(model, _source(model, corpus), **alone_kw))
    alone[hooks[1]].restore(behind)
    for want in expected[hooks[1]][3:]:
        assert np.array_equal(want, np.asarray(next(alone[hooks[1]])))
    with pytest.raises(ConfigError, match=r"taken by train_saes.*resume it with train_saes"):
        ActivationStore(model, _source(model, corpus), **alone_kw).restore(behind)


def test_a_pair_view_yields_two_hooks_rows_in_step_and_resumes(model, corpus) -> None:
    """A transcoder's view of two hooks yields (x, y) of the same rows: each batch equals the
    single-hook views' batches of the same step; checkpointed with unconsumed pairs, it resumes
    on a new store with exactly the pairs it would have read."""
    a, b = RESID, "blocks.1.hook_mlp_out"
    kw = dict(hook_names=[a, b], batch_size=8, store_batch_size_prompts=2, n_batches_in_buffer=2)
    reads = {"x": [a], "y": [b], "pair": [a, b]}

    def views_of():
        return ActivationStore(model, _source(model, corpus), **kw).hook_iterators(8, reads)

    full = views_of()
    want = {n: [] for n in reads}
    for _ in range(3):  # in turns: no view runs max_lag ahead of another
        for n in reads:
            want[n] += [next(full[n]) for _ in range(3)]
    for (x, y), xa, yb in zip(want["pair"], want["x"], want["y"], strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(xa))
        assert np.array_equal(np.asarray(y), np.asarray(yb))
    assert not np.allclose(np.asarray(want["x"][0]), np.asarray(want["y"][0]))

    first = views_of()
    for n, count in (("x", 5), ("y", 5), ("pair", 2)):
        for _ in range(count):
            next(first[n])
    states = {n: v.state(include_buffer=True) for n, v in first.items()}
    assert len(states["pair"]["pending"]) == len(states["pair"]["pending_out"]) == 3
    resumed = views_of()
    for n, v in resumed.items():
        v.restore(states[n])
    for n, start in (("x", 5), ("y", 5), ("pair", 2)):
        for expected in want[n][start:]:
            got = next(resumed[n])
            for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
                assert np.array_equal(np.asarray(e), np.asarray(g))
    single = ActivationStore(model, _source(model, corpus), **kw).hook_iterators(8)
    with pytest.raises(ConfigError, match=r"read \['blocks\.0\.hook_resid_post'"):
        single[a].restore({**states["pair"], "hook": a})
    with pytest.raises(ConfigError, match="a view reads one or two of the store's hooks"):
        ActivationStore(model, _source(model, corpus), **kw).hook_iterators(8, {"z": ["nope"]})


def test_process_share_of_the_batch(model, corpus) -> None:
    store = ActivationStore(
        model,
        _source(model, corpus, process_index=1, process_count=2),
        hook_names=RESID,
        batch_size=16,
        process_count=2,
        store_batch_size_prompts=2,
        n_batches_in_buffer=2,
        prefetch=0,
    )
    assert next(store).shape == (8, 32)


def test_train_batch_accepts_a_sharding(model, corpus) -> None:
    from jsae.parallel import batch_sharding, make_mesh

    mesh = make_mesh(data=4, model=2)
    store = ActivationStore(
        model,
        _source(model, corpus),
        hook_names=RESID,
        batch_size=16,
        store_batch_size_prompts=2,
        n_batches_in_buffer=2,
        prefetch=0,
        sharding=batch_sharding(mesh),
    )
    x = next(store)
    assert x.sharding == batch_sharding(mesh) and x.shape == (16, 32)


# ------------------------------------------------------------------------------ bad input


def test_unknown_hook_lists_valid_names(model, corpus) -> None:
    with pytest.raises(
        ConfigError, match=r"unknown hook name 'blocks\.0\.hook_resid_psot'.*hook_resid_post"
    ):
        ActivationStore(
            model, _source(model, corpus), hook_names="blocks.0.hook_resid_psot", batch_size=8
        )


def test_context_longer_than_model_positions_is_refused_before_work(model, corpus) -> None:
    source = _source(model, corpus, context_size=64)
    state = source.state()
    with pytest.raises(ConfigError, match="context_size=64 exceeds the model's 32 positions"):
        ActivationStore(model, source, hook_names=RESID, batch_size=8)
    assert source.state() == state, "nothing was read"


def test_d_in_mismatch_and_small_buffer_are_refused(model, corpus) -> None:
    with pytest.raises(ShapeError, match="d_in=32 but 64 was expected"):
        ActivationStore(model, _source(model, corpus), hook_names=RESID, batch_size=8, d_in=64)
    with pytest.raises(ConfigError, match="too few to serve a batch"):
        ActivationStore(
            model,
            _source(model, corpus),
            hook_names=RESID,
            batch_size=4096,
            store_batch_size_prompts=2,
            n_batches_in_buffer=2,
        )
    with pytest.raises(ConfigError, match="hook_head_index=9 out of range"):
        ActivationStore(
            model, _source(model, corpus), hook_names=Z, hook_head_index=9, batch_size=8
        )
