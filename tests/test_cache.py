"""The on-disk activation cache: shard writing, resuming, global shuffling on read."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from jsae.activations.cache import CachedActivations, CacheWriter, FeistelPermutation, read_manifest
from jsae.activations.prefetch import Prefetcher
from jsae.errors import ConfigError, FormatError

D = {"blocks.0.hook_resid_post": 3, "blocks.1.hook_mlp_out": 2}
HOOKS = list(D)


def _rows(start: int, n: int) -> dict[str, np.ndarray]:
    """Rows whose values encode their global index (hook 0) and its negative (hook 1)."""
    idx = np.arange(start, start + n, dtype=np.float32)[:, None]
    return {HOOKS[0]: np.repeat(idx, 3, 1), HOOKS[1]: -np.repeat(idx, 2, 1)}


def _write(path: Path, shard_sizes, *, finish=True, settings=None, dtype="float32") -> CacheWriter:
    w = CacheWriter(
        path, hook_names=HOOKS, d_in=D, context_size=4, settings=settings or {"m": 1}, dtype=dtype
    )
    start = w.n_tokens
    for n in shard_sizes:
        w.add_shard(_rows(start, n), np.arange(start, start + n) % 7, {"doc": w.n_shards + 1})
        start += n
    if finish:
        w.finish()
    return w


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 64, 1000, 4097])
def test_feistel_permutation_is_a_bijection(n: int) -> None:
    perm = FeistelPermutation(n, seed=(1, 2))
    out = perm(np.arange(n))
    assert sorted(out.tolist()) == list(range(n))
    if n >= 64:
        assert not np.array_equal(out, np.arange(n))
        assert not np.array_equal(out, FeistelPermutation(n, seed=(1, 3))(np.arange(n)))


def test_every_row_once_per_epoch_shuffled_across_shards(tmp_path) -> None:
    _write(tmp_path / "c", [40, 24, 40, 16])  # 120 rows, 4 shards
    reader = CachedActivations(tmp_path / "c", batch_size=12, seed=0, loop=True, prefetch=2)
    epochs = []
    for _ in range(2):
        seen = [next(reader) for _ in range(10)]
        a = np.concatenate([b[HOOKS[0]] for b in seen])
        assert np.array_equal(
            np.concatenate([b[HOOKS[1]] for b in seen]), -a[:, :2]
        )  # rows aligned
        epochs.append(a[:, 0].astype(int))
    for order in epochs:
        assert sorted(order.tolist()) == list(range(120))
    assert not np.array_equal(epochs[0], epochs[1])
    shards = np.searchsorted([40, 64, 104], epochs[0], side="right").reshape(10, 12)
    assert all(len(set(row.tolist())) >= 2 for row in shards), "batches mix rows of several shards"
    assert len(set(shards[:3].ravel().tolist())) == 4
    reader.close()


def test_single_hook_read_and_exclusion_and_finite_stream(tmp_path) -> None:
    _write(tmp_path / "c", [30, 30])
    reader = CachedActivations(
        tmp_path / "c",
        batch_size=8,
        hook_names=[HOOKS[1]],
        loop=False,
        exclude_token_ids=[0, 3],
        prefetch=0,
    )
    batches = list(reader)
    rows = -np.concatenate(batches)[:, 0].astype(int)
    assert all(b.shape == (8, 2) for b in batches)
    kept = [i for i in range(60) if i % 7 not in (0, 3)]
    assert len(rows) == len(kept) // 8 * 8
    assert set(rows.tolist()) <= set(kept) and len(set(rows.tolist())) == len(rows)


def test_unshuffled_read_is_in_order(tmp_path) -> None:
    _write(tmp_path / "c", [10, 6])
    reader = CachedActivations(tmp_path / "c", batch_size=4, shuffle=False, loop=False, prefetch=0)
    rows = np.concatenate([b[HOOKS[0]] for b in reader])[:, 0]
    assert rows.tolist() == list(range(16))


def test_processes_read_disjoint_rows(tmp_path) -> None:
    _write(tmp_path / "c", [33, 30])
    seen = []
    for p in range(3):
        r = CachedActivations(
            tmp_path / "c",
            batch_size=7,
            loop=False,
            process_index=p,
            process_count=3,
            hook_names=[HOOKS[0]],
            prefetch=0,
        )
        seen.append(set(np.concatenate(list(r))[:, 0].astype(int).tolist()))
    assert all(len(s) == 21 for s in seen)
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


@pytest.mark.parametrize("prefetch", [0, 3])
def test_reader_state_restore_is_exact(tmp_path, prefetch: int) -> None:
    _write(tmp_path / "c", [50, 50])
    a = CachedActivations(tmp_path / "c", batch_size=9, seed=4, prefetch=prefetch)
    stream = [next(a)[HOOKS[0]] for _ in range(25)]  # crosses an epoch
    b = CachedActivations(tmp_path / "c", batch_size=9, seed=4, prefetch=prefetch)
    for _ in range(13):
        next(b)
    state = json.loads(json.dumps(b.state()))
    c = CachedActivations(tmp_path / "c", batch_size=9, seed=4, prefetch=prefetch)
    c.restore(state)
    for want in stream[13:]:
        assert np.array_equal(next(c)[HOOKS[0]], want)
    other_seed = CachedActivations(tmp_path / "c", batch_size=9, seed=5, prefetch=prefetch)
    with pytest.raises(ConfigError, match=r"order for seed 4, .* seed 5.*Resume with seed=4"):
        other_seed.restore(state)  # the position means other rows in seed 5's order
    for r in (a, b, c, other_seed):
        r.close()


def test_writer_resumes_after_an_interruption(tmp_path) -> None:
    path = tmp_path / "c"
    _write(path, [10, 10], finish=False)
    # a crash while writing shard 2 leaves a temporary directory and maybe the shard itself
    (path / "shards" / ".000002.tmp-x").mkdir()
    (path / "shards" / "000002").mkdir()
    (path / "shards" / "000002" / "0.npy").write_bytes(b"partial")
    with pytest.raises(FormatError, match="unfinished"):
        CachedActivations(path, batch_size=4)
    w = CacheWriter(path, hook_names=HOOKS, d_in=D, context_size=4, settings={"m": 1})
    assert (w.n_shards, w.n_tokens, w.source_state) == (2, 20, {"doc": 2})
    w.add_shard(_rows(20, 10), np.arange(20, 30) % 7)
    w.finish()
    rows = np.concatenate(
        list(
            CachedActivations(
                path, batch_size=5, shuffle=False, loop=False, prefetch=0, hook_names=[HOOKS[0]]
            )
        )
    )
    assert rows[:, 0].tolist() == list(range(30))
    with pytest.raises(ConfigError, match="different"):
        CacheWriter(path, hook_names=HOOKS, d_in=D, context_size=4, settings={"m": 2})
    with pytest.raises(FileExistsError, match="resume=True"):
        CacheWriter(path, hook_names=HOOKS, d_in=D, context_size=4, settings={"m": 1}, resume=False)


def test_bfloat16_cache_round_trip(tmp_path) -> None:
    import ml_dtypes

    _write(tmp_path / "c", [8], dtype="bfloat16")
    assert read_manifest(tmp_path / "c")["dtype"] == "bfloat16"
    out = next(CachedActivations(tmp_path / "c", batch_size=8, shuffle=False, prefetch=0))
    assert out[HOOKS[0]].dtype == ml_dtypes.bfloat16
    assert out[HOOKS[0]].astype(np.float32)[:, 0].tolist() == list(range(8))


def test_bad_caches_are_refused(tmp_path) -> None:
    with pytest.raises(FormatError, match=r"manifest\.json is missing"):
        CachedActivations(tmp_path, batch_size=2)
    (tmp_path / "notempty").mkdir()
    (tmp_path / "notempty" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not a jsae activation cache"):
        CacheWriter(tmp_path / "notempty", hook_names=HOOKS, d_in=D, context_size=4)
    _write(tmp_path / "c", [10, 10])
    with pytest.raises(ConfigError, match="no activations for"):
        CachedActivations(tmp_path / "c", batch_size=2, hook_names=["blocks.9.hook_resid_pre"])
    with pytest.raises(ConfigError, match="expected"):
        CacheWriter(
            tmp_path / "c", hook_names=HOOKS, d_in=D, context_size=4, settings={"m": 1}
        ).add_shard({HOOKS[0]: np.zeros((3, 5)), HOOKS[1]: np.zeros((3, 2))}, np.zeros(3))
    shutil.rmtree(tmp_path / "c" / "shards" / "000001")
    with pytest.raises(FormatError, match="000001"):
        CachedActivations(tmp_path / "c", batch_size=2)


def test_saelens_cache_format_both_ways(tmp_path) -> None:
    """SAELens's own cache writer -> jsae import; jsae export -> SAELens's ActivationsStore."""
    from helpers import run_reference

    from jsae.activations.cache import export_saelens_cache, import_saelens_cache

    rng = np.random.default_rng(0)
    n, ctx, d = 6, 5, 3
    acts = rng.normal(size=(n, ctx, d)).astype(np.float32)
    ids = rng.integers(0, 100, (n, ctx)).astype(np.int32)
    hook = "blocks.0.hook_resid_post"
    w = CacheWriter(tmp_path / "jsae", hook_names=[hook], d_in={hook: d}, context_size=ctx)
    w.add_shard({hook: acts[:4].reshape(-1, d)}, ids[:4])
    w.add_shard({hook: acts[4:].reshape(-1, d)}, ids[4:])
    w.finish()
    export_saelens_cache(tmp_path / "jsae", tmp_path / "jsae_export")
    np.savez(tmp_path / "cache_inputs.npz", acts=acts, token_ids=ids)
    (tmp_path / "cache_hook.txt").write_text(hook)
    run_reference("saelens_packing.py", "cache", tmp_path)
    with np.load(tmp_path / "read_back.npz") as back:  # SAELens reading jsae's export
        assert np.array_equal(back["acts"], acts.reshape(-1, d))
        assert np.array_equal(back["token_ids"], ids.reshape(-1))
    import_saelens_cache(tmp_path / "saelens_cache", tmp_path / "imported", shard_tokens=10)
    manifest = read_manifest(tmp_path / "imported")
    assert manifest["hook_names"] == [hook] and manifest["context_size"] == ctx
    reader = CachedActivations(
        tmp_path / "imported", batch_size=ctx, shuffle=False, loop=False, prefetch=0
    )
    assert np.array_equal(np.concatenate(list(reader)), acts.reshape(-1, d))
    assert np.array_equal(np.concatenate(reader.token_ids), ids.reshape(-1))
    with pytest.raises(FormatError, match=r"not a jsae activation cache.*SAELens Arrow cache"):
        CachedActivations(tmp_path / "saelens_cache", batch_size=2)


# ------------------------------------------------------------------------------ small caches


def _stream(path: Path, batch_size: int, n_batches: int, **kw) -> np.ndarray:
    """Row indices (hook 0 encodes them) of the first `n_batches` batches, in order."""
    reader = CachedActivations(path, batch_size, hook_names=[HOOKS[0]], seed=3, **kw)
    try:
        batches = [next(reader) for _ in range(n_batches)]
    finally:
        reader.close()
    assert all(b.shape == (batch_size, 3) for b in batches)
    return np.concatenate(batches)[:, 0].astype(int)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_batch_larger_than_the_cache_spans_several_epochs(tmp_path, prefetch: int) -> None:
    """The reader is an endless sequence of epochs; a batch is its next rows, whatever its size."""
    _write(tmp_path / "c", [6, 4])  # 10 rows
    one_proc = dict(process_index=0, process_count=1, prefetch=prefetch)
    big = _stream(tmp_path / "c", 25, 2, **one_proc)  # 5 epochs in 2 batches
    assert np.array_equal(big, _stream(tmp_path / "c", 5, 10, **one_proc))
    epochs = big.reshape(5, 10)
    assert all(sorted(e.tolist()) == list(range(10)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # each epoch in its own order
    # a process's share (5 of 10 rows) smaller than half its batch
    for p in range(2):
        procs = dict(process_index=p, process_count=2, prefetch=prefetch)
        got = _stream(tmp_path / "c", 11, 2, **procs)
        assert np.array_equal(got, _stream(tmp_path / "c", 1, 22, **procs))
        assert all(len(set(e.tolist())) == 5 for e in got[:20].reshape(4, 5))
    # token ids are row % 7: excluding ids 0..5 keeps row 6 alone, which fills every batch
    only_six = _stream(tmp_path / "c", 3, 2, exclude_token_ids=range(6), **one_proc)
    assert only_six.tolist() == [6] * 6


@pytest.mark.parametrize("prefetch", [0, 2])
def test_nothing_to_read_is_refused_clearly(tmp_path, prefetch: int) -> None:
    _write(tmp_path / "c", [6, 4])
    reader = CachedActivations(
        tmp_path / "c",
        4,
        exclude_token_ids=range(7),
        process_index=0,
        process_count=1,
        prefetch=prefetch,
    )
    with pytest.raises(ConfigError, match="every cached row this process reads is excluded"):
        next(reader)
    reader.close()
    with pytest.raises(ConfigError, match="fewer than the 12 processes"):
        CachedActivations(tmp_path / "c", 4, process_index=11, process_count=12)


# ------------------------------------------------------------------------------ prefetching


def _call_with_timeout(fn, timeout: float = 10.0):
    """`fn()`'s result or exception, in a thread: a call that hangs fails the test instead."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"call still blocked after {timeout} s"
    return out


def test_prefetcher_repeats_the_end_of_a_finite_stream() -> None:
    pre = Prefetcher(lambda: iter(range(3)), depth=2)
    assert [pre.get() for _ in range(3)] == [0, 1, 2]
    for _ in range(3):
        assert isinstance(_call_with_timeout(pre.get).get("error"), StopIteration)
    pre.close()


def test_prefetcher_repeats_the_producer_error() -> None:
    def failing():
        yield 1
        raise ValueError("bad shard")

    pre = Prefetcher(failing, depth=2)
    assert pre.get() == 1
    errors = [_call_with_timeout(pre.get).get("error") for _ in range(3)]
    assert all(isinstance(e, ValueError) and str(e) == "bad shard" for e in errors)
    pre.close()
    assert isinstance(_call_with_timeout(pre.get).get("error"), ValueError)
    closed = Prefetcher(lambda: iter(range(100)), depth=2)
    closed.close()
    assert isinstance(_call_with_timeout(closed.get).get("error"), RuntimeError)


def test_finite_prefetched_reader_keeps_raising_stop_iteration(tmp_path) -> None:
    _write(tmp_path / "c", [10])
    reader = CachedActivations(
        tmp_path / "c", 5, loop=False, process_index=0, process_count=1, prefetch=2
    )
    assert len(list(reader)) == 2
    for _ in range(2):
        assert isinstance(_call_with_timeout(lambda: next(reader)).get("error"), StopIteration)
    reader.close()


# ------------------------------------------------------------------------------ dtypes


@pytest.mark.parametrize(
    ("alias", "name"), [("torch.float32", "float32"), ("torch.bfloat16", "bfloat16")]
)
def test_dtype_aliases_are_stored_by_their_canonical_name(tmp_path, alias: str, name: str) -> None:
    from jsae.activations.config import LanguageModelSettings

    settings = LanguageModelSettings(activation_dtype=alias, model_dtype=alias)
    assert (settings.activation_dtype, settings.model_dtype) == (name, name)
    assert settings == LanguageModelSettings(activation_dtype=name, model_dtype=name)
    _write(tmp_path / "c", [8], dtype=alias)
    assert read_manifest(tmp_path / "c")["dtype"] == name
    out = next(CachedActivations(tmp_path / "c", 8, shuffle=False, prefetch=0))
    assert out[HOOKS[0]].astype(np.float32)[:, 0].tolist() == list(range(8))
    w = CacheWriter(
        tmp_path / "c", hook_names=HOOKS, d_in=D, context_size=4, dtype=name, settings={"m": 1}
    )
    assert w.complete  # the same cache, whichever spelling opened it


# ------------------------------------------------------------------------------ overwrite


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def _hidden_siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_that_is_not_a_cache_is_never_written_or_deleted(
    tmp_path, overwrite: bool
) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "notes.txt").write_text("important")
    (project / "src" / "a.py").write_text("x = 1")
    before = _tree(project)
    with pytest.raises(FileExistsError, match="not a jsae activation cache") as err:
        CacheWriter(project, hook_names=HOOKS, d_in=D, context_size=4, overwrite=overwrite)
    assert "overwrite=True" not in str(err.value) and "--overwrite" not in str(err.value)
    assert "notes.txt" in str(err.value)
    assert _tree(project) == before and not _hidden_siblings(project)
    # a cache directory holding something a cache does not is not replaced either
    _write(tmp_path / "c", [5])
    (tmp_path / "c" / "notes.txt").write_text("mine")
    cache_before = _tree(tmp_path / "c")
    if overwrite:
        with pytest.raises(FileExistsError, match=r"also \['notes.txt'\]"):
            _overwriter(tmp_path / "c", {"m": 2})
    assert _tree(tmp_path / "c") == cache_before


def _overwriter(path: Path, settings: dict, resume: bool = True) -> CacheWriter:
    return CacheWriter(
        path,
        hook_names=HOOKS,
        d_in=D,
        context_size=4,
        settings=settings,
        overwrite=True,
        resume=resume,
    )


def _first_rows(path: Path) -> list[int]:
    reader = CachedActivations(
        path, 1, shuffle=False, loop=False, prefetch=0, hook_names=[HOOKS[0]]
    )
    return np.concatenate(list(reader))[:, 0].astype(int).tolist()


def test_a_swap_killed_between_its_renames_loses_neither_cache(tmp_path, monkeypatch) -> None:
    """The old cache is moved aside, then the replacement is renamed in: a kill in between
    leaves no cache at the path. The next writer puts the old one back and resumes."""
    import jsae.fsutil as fsutil

    path = tmp_path / "c"
    _write(path, [4, 4], settings={"m": 1})
    old = _tree(path)
    w = _overwriter(path, {"m": 2})
    w.add_shard(_rows(100, 3), np.arange(3), {"doc": 1})
    renames, real_rename = [], os.rename

    def rename_then_die(src, dst):  # the first rename runs; the process "dies" at the second
        renames.append(dst)
        if len(renames) >= 2:
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(fsutil.os, "rename", rename_then_die)
    monkeypatch.setattr(fsutil, "_alive", lambda pid: False)  # as if this process had died
    with pytest.raises(KeyboardInterrupt):
        w.finish()
    monkeypatch.setattr(fsutil.os, "rename", real_rename)
    assert not path.exists()
    assert CacheWriter(path, hook_names=HOOKS, d_in=D, context_size=4, settings={"m": 1}).complete
    assert _tree(path) == old and _first_rows(path) == list(range(8))  # the old one is back
    w = _overwriter(path, {"m": 2})  # the rerun of `jsae cache --overwrite`: swaps it in
    assert w.complete and w.n_shards == 1
    assert _first_rows(path) == list(range(100, 103)) and _hidden_siblings(path) == []


def test_overwrite_keeps_the_old_cache_until_the_new_one_is_complete(tmp_path) -> None:
    path = tmp_path / "c"
    _write(path, [4, 4], settings={"m": 1})
    old = _tree(path)
    w = _overwriter(path, {"m": 2})
    w.add_shard(_rows(100, 3), np.arange(3), {"doc": 1})
    assert _tree(path) == old and _first_rows(path) == list(range(8))  # still whole, readable
    # the run dies here; the next overwrite run with the same settings resumes the replacement
    w = _overwriter(path, {"m": 2})
    assert (w.n_shards, w.source_state) == (1, {"doc": 1})
    assert _tree(path) == old
    w.add_shard(_rows(103, 2), np.arange(2))
    w.finish()
    assert _first_rows(path) == list(range(100, 105))
    assert read_manifest(path)["settings"] == {"m": 2} and read_manifest(path)["complete"]
    assert _hidden_siblings(path) == []
    # different settings (or resume=False) start the replacement afresh
    w = _overwriter(path, {"m": 3})
    w.add_shard(_rows(200, 2), np.arange(2))
    w = _overwriter(path, {"m": 4})
    assert w.n_shards == 0
    w = _overwriter(path, {"m": 4}, resume=False)
    assert w.n_shards == 0
    w.add_shard(_rows(300, 1), np.arange(1))
    w.finish()
    assert _first_rows(path) == [300] and _hidden_siblings(path) == []
    # without overwrite an interrupted cache still resumes in place
    w = CacheWriter(tmp_path / "d", hook_names=HOOKS, d_in=D, context_size=4, settings={"m": 1})
    w.add_shard(_rows(0, 2), np.arange(2), {"doc": 1})
    w = CacheWriter(tmp_path / "d", hook_names=HOOKS, d_in=D, context_size=4, settings={"m": 1})
    assert (w.n_shards, w.source_state) == (1, {"doc": 1})
