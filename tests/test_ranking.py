"""`jsae.ranking.top_k` equals `lax.top_k` (values, indices, ties) while ranking in float32, in
one stage, two or several narrow passes; `top_k_mask` marks exactly its entries, whether from its
indices or counted."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae import ranking
from jsae.ranking import blocked_top_k, counting_top_k_mask, peeled_top_k, top_k, top_k_mask


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_top_k_equals_lax_top_k_ties_included(dtype: str) -> None:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(-4, 5, (6, 300)) / 4 + rng.integers(0, 3, (6, 300)) / 64, dtype)
    assert int(jnp.sum(x[0] == x[0, 0])) > 1, "the case has ties"
    got_vals, got_idx = top_k(x, 40)
    want_vals, want_idx = jax.lax.top_k(x, 40)
    assert got_vals.dtype == x.dtype
    assert np.array_equal(np.asarray(got_idx), np.asarray(want_idx))
    assert np.array_equal(np.asarray(got_vals), np.asarray(want_vals))


def test_narrow_floats_are_ranked_in_float32() -> None:
    jaxpr = jax.make_jaxpr(lambda x: top_k(x, 3))(jnp.zeros((4, 8), jnp.bfloat16))
    (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "top_k"]
    assert eqn.invars[0].aval.dtype == jnp.float32


def _tied_rows(shape: tuple[int, ...], dtype: str) -> jax.Array:
    """Rows drawn from a few dozen levels, so many entries tie at every rank."""
    rng = np.random.default_rng(1)
    return jnp.asarray(rng.integers(-20, 21, shape) / 8, dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize(("k", "block"), [(1, 64), (16, 64), (64, 64), (32, 256), (40, 512)])
def test_blocked_top_k_equals_lax_top_k_ties_included(dtype: str, k: int, block: int) -> None:
    x = _tied_rows((3, 5, 1024), dtype)
    got_vals, got_idx = top_k(x, k, block)
    want_vals, want_idx = jax.lax.top_k(x.astype(jnp.float32), k)
    assert got_vals.dtype == x.dtype
    assert np.array_equal(np.asarray(got_idx), np.asarray(want_idx))
    assert np.array_equal(np.asarray(got_vals, np.float32), np.asarray(want_vals))


@pytest.mark.parametrize(
    ("ranker", "width", "k"),
    [
        (lambda x, k: blocked_top_k(x, k, 256), 2048, 24),
        (lambda x, k: peeled_top_k(x, k, 16), 512, 40),
    ],
    ids=["blocked", "peeled"],
)
def test_staged_top_k_gradient_equals_lax_top_k(ranker, width: int, k: int) -> None:
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, width)), jnp.float32)
    weights = jnp.arange(k, dtype=jnp.float32)

    def loss(rank):
        return lambda x: jnp.sum(rank(x)[0] ** 2 * weights)

    got = jax.grad(loss(lambda x: ranker(x, k)))(x)
    want = jax.grad(loss(lambda x: jax.lax.top_k(x, k)))(x)
    assert np.array_equal(np.asarray(got), np.asarray(want))
    assert int(jnp.sum(got != 0)) == 4 * (k - 1)  # the top entry of each row has weight 0


def _top_k_calls(fn, x: jax.Array) -> int:
    return sum(e.primitive.name == "top_k" for e in jax.make_jaxpr(fn)(x).jaxpr.eqns)


def test_the_platform_block_widens_to_4k(monkeypatch: pytest.MonkeyPatch) -> None:
    x = jnp.zeros((2, 16384), jnp.float32)
    assert _top_k_calls(lambda x: top_k(x, 32), x) == 1  # one stage on CPUs by default
    monkeypatch.setitem(ranking.BLOCK_BY_PLATFORM, jax.default_backend(), 512)
    assert [ranking._platform_block(k) for k in (1, 32, 128, 129, 384)] == [
        512, 512, 512, 1024, 2048,
    ]  # fmt: skip
    assert _top_k_calls(lambda x: top_k(x, 32), x) == 2
    assert _top_k_calls(lambda x: top_k(x, 32, 0), x) == 1  # 0: one stage, whatever the platform
    assert _top_k_calls(lambda x: top_k(x, 8192), x) == 1  # no block holds 4k: one stage


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_peeled_top_k_equals_lax_top_k_ties_included(
    monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    """Passes of at most 16 (through `top_k`, as a platform in `PEEL_BY_PLATFORM` runs them),
    k a multiple of the pass width or not, up to `MAX_PEELS` passes."""
    monkeypatch.setitem(ranking.PEEL_BY_PLATFORM, jax.default_backend(), 16)
    x = _tied_rows((3, 5, 1000), dtype)
    for k in (1, 16, 17, 32, 40, 64):
        got_vals, got_idx = jax.jit(top_k, static_argnums=1)(x, k)
        want_vals, want_idx = jax.lax.top_k(x.astype(jnp.float32), k)
        assert got_vals.dtype == x.dtype
        assert np.array_equal(np.asarray(got_idx), np.asarray(want_idx)), k
        assert np.array_equal(np.asarray(got_vals, np.float32), np.asarray(want_vals)), k


def test_peeled_top_k_ranks_in_one_stage_where_passes_reach_minus_infinity() -> None:
    """A taken entry is set to -inf, so a row whose later passes reach -inf or NaN could take it
    twice: such a batch is ranked in one stage."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((3, 64)), jnp.float32)
    cases = {
        "finite": x,
        "-inf in reach": x.at[0, 20:].set(-jnp.inf),
        "nan": x.at[1, ::2].set(jnp.nan),
        "+inf ties": x.at[2, :40].set(jnp.inf),
    }
    for name, case in cases.items():
        for k, width in [(8, 4), (32, 16), (64, 16), (30, 7)]:
            got = jax.jit(peeled_top_k, static_argnums=(1, 2))(case, k, width)
            want = jax.lax.top_k(case, k)
            assert np.array_equal(np.asarray(got[1]), np.asarray(want[1])), (name, k, width)
            assert np.array_equal(np.asarray(got[0]), np.asarray(want[0]), equal_nan=True)
    with pytest.raises(ValueError, match="takes floats"):
        peeled_top_k(jnp.zeros((2, 8), jnp.int32), 4, 2)


def test_the_platform_pass_width_peels_up_to_max_peels(monkeypatch: pytest.MonkeyPatch) -> None:
    x = jnp.zeros((2, 16384), jnp.float32)
    monkeypatch.setitem(ranking.PEEL_BY_PLATFORM, jax.default_backend(), 16)
    monkeypatch.setitem(ranking.BLOCK_BY_PLATFORM, jax.default_backend(), 512)
    assert _top_k_calls(lambda x: top_k(x, 16), x) == 1  # one pass: the backend's own kernel
    assert _top_k_calls(lambda x: top_k(x, 32), x) == 2  # two passes (the fallback is in a cond)
    assert _top_k_calls(lambda x: top_k(x, 64), x) == 4
    assert _top_k_calls(lambda x: top_k(x, 65), x) == 2  # over MAX_PEELS: the blocks again
    assert _top_k_calls(lambda x: top_k(x, 32, 0), x) == 1  # an explicit block wins
    ints = jnp.zeros((2, 16384), jnp.int32)
    assert _top_k_calls(lambda x: top_k(x, 32), ints) == 2  # integers are never peeled


def _lax_mask(x: jax.Array, k: int) -> np.ndarray:
    """The entries `lax.top_k` picks (ranked in float32, as jsae ranks), as a numpy mask."""
    _, idx = jax.lax.top_k(jnp.asarray(x, jnp.float32), k)
    mask = np.zeros(x.shape, bool)
    np.put_along_axis(mask, np.asarray(idx), True, axis=-1)
    return mask


def _mask_cases() -> np.ndarray:
    """Five value patterns, each [2, 3, 1000]: normal, heavy ties, all equal, signed zeros and
    infinities, tiny and huge (infinite in float16). [5, 2, 3, 1000]"""
    rng = np.random.default_rng(4)
    normal = rng.standard_normal((2, 3, 1000))
    extremes = [-np.inf, -1.0, -0.0, 0.0, 2.0, np.inf]
    return np.stack([
        normal,
        rng.integers(-20, 21, normal.shape) / 8,
        np.full(normal.shape, 0.25),
        rng.choice(extremes, normal.shape),
        normal * 1e-30 + (normal > 2) * 1e30,  # bfloat16 holds these
    ])  # fmt: skip


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])  # 16- and 32-bit keys
def test_counting_mask_marks_exactly_the_top_k(dtype: str) -> None:
    """Every digit width, k from 1 to the whole row, and value patterns with ties, signed
    zeros and infinities: the counted mask is `lax.top_k`'s selection, ties taken by lowest
    index (rows of 1000 entries: the index search ends on a partial digit)."""
    x = jnp.asarray(_mask_cases(), dtype)
    count = jax.jit(counting_top_k_mask, static_argnums=(1, 2))
    for k, radix_bits in [(1, 2), (7, 1), (64, 2), (64, 3), (64, 4), (999, 2), (1000, 2)]:
        want = _lax_mask(x, k)
        assert np.array_equal(np.asarray(count(x, k, radix_bits)), want), (k, radix_bits)
    assert np.array_equal(np.asarray(top_k_mask(x, 64, counting=False)), _lax_mask(x, 64))


def test_counting_mask_refuses_what_it_cannot_count() -> None:
    with pytest.raises(ValueError, match="16- or 32-bit floats"):
        counting_top_k_mask(jnp.zeros((2, 8), jnp.int32), 3)
    with pytest.raises(ValueError, match=r"k must be in 1\.\.8"):
        counting_top_k_mask(jnp.zeros((2, 8)), 9)
    x = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)  # top_k_mask ranks what it cannot count
    assert np.array_equal(np.asarray(top_k_mask(x, 3, counting=True)), _lax_mask(x, 3))


def test_the_platform_chooses_how_the_mask_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    x = jnp.zeros((2, 1024), jnp.float32)
    assert _top_k_calls(lambda x: top_k_mask(x, 32), x) == 1  # CPUs rank by default
    monkeypatch.setattr(ranking, "COUNTING_MASK_PLATFORMS", (jax.default_backend(),))
    assert _top_k_calls(lambda x: top_k_mask(x, 32), x) == 0
    assert _top_k_calls(lambda x: top_k_mask(x, 32, counting=False), x) == 1


@pytest.mark.parametrize(
    "arch",
    [
        {"architecture": "topk", "use_sparse_activations": False},
        {"architecture": "topk", "use_sparse_activations": True},
    ],
    ids=["topk-dense", "topk-sparse"],
)
def test_training_with_the_two_stage_top_k_is_bit_identical(
    monkeypatch: pytest.MonkeyPatch, arch: dict
) -> None:
    """What GPUs run (two stages) trains exactly as one stage does, AuxK on dead latents too;
    so does the dense path with its mask counted, and the sparse path ranking in passes."""
    import jsae

    config = {
        "d_in": 32, "d_sae": 2048, "k": 16, "train_batch_size_tokens": 64,
        "training_tokens": 64 * 6, "dead_feature_window": 2, "log_to_wandb": False,
        "checkpoint_path": None, "output_path": None, "progress_bar": False, **arch,
    }  # fmt: skip
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal((64, 32), dtype=np.float32) for _ in range(6)]

    def train() -> tuple[dict[str, np.ndarray], list[float]]:
        trainer = jsae.Trainer(config, [])
        aux = [float(trainer.step(x)["losses/auxiliary_reconstruction_loss"]) for x in batches]
        return {k: np.asarray(v) for k, v in trainer.state.params.items()}, aux

    one_stage, aux = train()
    assert aux[-1] > 0, "dead latents: AuxK ran"
    monkeypatch.setitem(ranking.BLOCK_BY_PLATFORM, jax.default_backend(), 256)
    two_stages, aux_two = train()
    assert aux_two == aux
    for name, value in one_stage.items():
        assert np.array_equal(two_stages[name], value), name
    if arch["use_sparse_activations"]:  # TopK's and AuxK's top-16 in passes of 8
        monkeypatch.setitem(ranking.PEEL_BY_PLATFORM, jax.default_backend(), 8)
        variant, aux_variant = train()
    else:  # the dense path's mask, counted
        monkeypatch.setattr(ranking, "COUNTING_MASK_PLATFORMS", (jax.default_backend(),))
        variant, aux_variant = train()
    assert aux_variant == aux
    for name, value in one_stage.items():
        assert np.array_equal(variant[name], value), name
