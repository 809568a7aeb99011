"""`jsae.ranking.top_k` equals `lax.top_k` (values, indices, ties) while ranking in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae import ranking
from jsae.ranking import blocked_top_k, top_k


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


def test_blocked_top_k_gradient_equals_lax_top_k() -> None:
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 2048)), jnp.float32)
    weights = jnp.arange(24, dtype=jnp.float32)

    def loss(ranker):
        return lambda x: jnp.sum(ranker(x)[0] ** 2 * weights)

    got = jax.grad(loss(lambda x: blocked_top_k(x, 24, 256)))(x)
    want = jax.grad(loss(lambda x: jax.lax.top_k(x, 24)))(x)
    assert np.array_equal(np.asarray(got), np.asarray(want))
    assert int(jnp.sum(got != 0)) == 4 * 23  # the top entry of each row has weight 0


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
    """What GPUs run (two stages) trains exactly as one stage does, AuxK on dead latents too."""
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
