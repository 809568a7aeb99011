"""BatchTopK's cut found by counting passes (jsae.training.cut) is exactly the sort's.

The reference is numpy's stable argsort of the flat batch: the n largest, ties at the cut
kept in flat order (as `lax.top_k` keeps them). Every case but the last has at least n
positive scores, so the counting search itself (not its top-k fallback) must find the cut.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jsae import ConfigError, parallel
from jsae.training.cut import _MAX_PASSES, first_ties_mask, kept_positions, nth_largest
from jsae.training.selection import batch_topk_mask, batch_topk_positions, batch_topk_selection

B, N = 48, 384


def _reference_mask(scores: np.ndarray, n: int) -> np.ndarray:
    flat = np.asarray(scores, np.float32).reshape(-1)
    keep = np.argsort(-flat, kind="stable")[:n]
    mask = np.zeros(flat.shape, bool)
    mask[keep] = True
    return mask.reshape(scores.shape)


def _cases() -> dict[str, np.ndarray | jax.Array]:
    rng = np.random.default_rng(0)
    normal = rng.standard_normal((B, N)).astype(np.float32)
    token_norms = np.exp(rng.normal(0, 0.6, (B, 1))).astype(np.float32)
    latent_scales = np.exp(rng.normal(0, 1.0, (1, N))).astype(np.float32)
    duplicated = normal * token_norms
    duplicated[::4] = duplicated[1]  # repeated tokens (BOS): exact ties across rows
    return {
        "normal": normal,
        "token norms": normal * token_norms,
        "latent scales": normal * token_norms * latent_scales,
        "duplicated rows": duplicated,
        "few values (heavy ties)": rng.integers(-3, 6, (B, N)).astype(np.float32),
        "tiny and huge": normal * np.float32(1e-12) + (normal > 2.5) * np.float32(1e20),
        "bfloat16": jnp.asarray(normal * token_norms, jnp.bfloat16),
    }


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("k", [1, 40])
@pytest.mark.parametrize("band", [8192, 3])
def test_cut_and_mask_equal_the_sorted_selection(name: str, k: int, band: int) -> None:
    scores = CASES[name]
    n = k * B
    flat = np.sort(np.asarray(scores, np.float32).reshape(-1))[::-1]
    assert flat[n - 1] > 2.0**-60, "every case here has n positive scores"

    @jax.jit
    def select(s: jax.Array) -> tuple:
        cut = nth_largest(s, n, band=band)
        return cut, first_ties_mask(s, cut, n), kept_positions(s, cut, n)

    cut, mask, kept = select(scores)
    assert bool(cut.found)
    assert float(cut.value) == flat[n - 1]
    assert int(cut.n_greater) == int(np.sum(flat > flat[n - 1]))
    assert int(cut.n_at_least) == int(np.sum(flat >= flat[n - 1]))
    assert np.array_equal(np.asarray(mask), _reference_mask(scores, n))
    assert np.array_equal(np.stack(kept), np.nonzero(_reference_mask(scores, n)))
    assert np.array_equal(np.asarray(batch_topk_mask(scores, n)), _reference_mask(scores, n))


@pytest.mark.parametrize("width", [384, 100, 31])  # blocks of 32 values, padded when needed
def test_kept_positions_of_any_width(width: int) -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(-2, 4, (40, width)).astype(np.float32)  # heavy ties
    scores[5] = rng.uniform(0, 4, width)
    for n in (1, 40, 7 * 40):
        want = np.nonzero(_reference_mask(scores, n))
        assert np.array_equal(np.stack(batch_topk_positions(scores, n)), want)


def test_a_sample_that_misleads_the_first_guesses_still_finds_the_exact_cut() -> None:
    """The first guesses come from every 67th value; here those are outliers or zeros, the
    values span 80 orders of magnitude or heavy ties, and the band is 3 values, so the search
    must narrow the bracket itself (interpolating, then bisecting) to one float."""
    rng = np.random.default_rng(5)
    n = 32 * B
    search = jax.jit(lambda s: nth_largest(s, n, band=3))
    for trial in range(24):
        if trial % 2:
            flat = np.exp(rng.uniform(-40, 40, B * N))
        else:
            flat = rng.integers(-3, 1000, B * N) * 10.0 ** rng.integers(-10, 10)
        flat = flat.astype(np.float32)
        flat[::67] = 0 if trial % 3 == 0 else flat[::67] * np.float32(10.0 ** rng.uniform(-30, 20))
        want = np.sort(flat)[::-1][n - 1]
        cut = search(flat.reshape(B, N))
        assert bool(cut.found), trial
        assert int(cut.passes) < _MAX_PASSES, trial  # closed, not run out
        assert float(cut.value) == want, trial


@pytest.mark.parametrize("positives", [10, 1, 0])
def test_too_few_positive_scores_fall_back_to_top_k(positives: int) -> None:
    rng = np.random.default_rng(1)
    scores = -np.abs(rng.standard_normal((B, N))).astype(np.float32) - 0.5
    scores[3, :positives] = rng.uniform(1, 2, positives)  # 40 wanted
    assert not bool(jax.jit(lambda s: nth_largest(s, 40).found)(scores))
    got = batch_topk_mask(scores, 40)
    assert np.array_equal(np.asarray(got), _reference_mask(scores, 40))
    smallest = batch_topk_selection(scores, 40)[1]
    assert float(smallest) == (scores[3, :positives].min() if positives else np.inf)
    kept = batch_topk_positions(scores, 40)
    assert np.array_equal(np.stack(kept), np.nonzero(_reference_mask(scores, 40)))


def test_float16_subnormal_scores_are_ranked() -> None:
    """Values below float16's smallest normal (6.1e-5) are still far above 2**-60."""
    scores = jnp.asarray([[0.0, 0.0, 1e-5, 0.5], [0.0, 3e-6, 0.0, 0.25]], jnp.float16)
    mask, smallest = batch_topk_selection(scores, 4)
    assert np.array_equal(np.asarray(mask), _reference_mask(np.asarray(scores), 4))
    assert float(smallest) == float(scores[1, 1])


@pytest.mark.parametrize("mesh", [(1, 8), (8, 1), (2, 4)], ids=lambda m: f"{m[0]}x{m[1]}")
@pytest.mark.parametrize("name", ["token norms", "duplicated rows", "bfloat16"])
def test_the_cut_over_a_mesh_is_the_single_device_cut(mesh: tuple[int, int], name: str) -> None:
    """Counts, the maximum, the sample and the final band are combined across every device."""
    scores = CASES[name]
    n = 8 * B
    m = parallel.make_mesh(*mesh)
    spec = P("data", "model")

    def local(s: jax.Array) -> tuple:
        return tuple(nth_largest(s, n, ("data", "model")))

    sharded = jax.jit(jax.shard_map(local, mesh=m, in_specs=spec, out_specs=P(), check_vma=False))(
        jax.device_put(scores, NamedSharding(m, spec))
    )
    single = nth_largest(scores, n)
    for field, got, want in zip(single._fields, sharded, single, strict=True):
        if field != "passes":  # the sample differs (strided per shard), so may the path
            assert np.array_equal(np.asarray(got), np.asarray(want)), field
    placed = jax.device_put(scores, NamedSharding(m, spec))
    got = jax.jit(lambda s: batch_topk_mask(s, n, m))(placed)
    assert np.array_equal(np.asarray(got), _reference_mask(scores, n))


def test_a_batch_beyond_int32_counts_is_refused_on_one_device() -> None:
    huge = jax.ShapeDtypeStruct((2**16, 2**15), jnp.float32)  # 2**31 entries, never allocated
    with pytest.raises(ConfigError, match="train_batch_size_tokens"):
        jax.eval_shape(lambda s: batch_topk_mask(s, 10), huge)
