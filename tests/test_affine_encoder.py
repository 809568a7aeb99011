"""The training encoder's hand-written gradients and the reductions the dense step relies on.

`affine_encoder` replaces autodiff of `(x - center) @ W + b` (closed form: its gradients must
equal autodiff's); `column_sum` replaces `jnp.sum(a, axis=0)`; the standard SAE's L1 penalty
at p = 1 is computed from the latents' column means, and must equal the per-token Lp form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from jsae import parallel
from jsae.architectures.base import (
    TrainContext,
    affine_encoder,
    column_sum,
    computed_affine_encoder,
    firing_stats,
    lp_norm,
)


def _inputs(shape: tuple[int, ...], n: int = 7, dtype=jnp.float32):
    rng = np.random.default_rng(0)
    d = shape[-1]
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    center = jnp.asarray(rng.standard_normal(d), dtype)
    W = jnp.asarray(rng.standard_normal((d, n)), dtype)
    b = jnp.asarray(rng.standard_normal(n), dtype)
    probe = jnp.asarray(rng.standard_normal((*shape[:-1], n)), jnp.float32)  # d loss / d out
    return x, center, W, b, probe


@pytest.mark.parametrize("shape", [(9, 5), (2, 3, 5)])  # rows, and leading dims (hook_z)
@pytest.mark.parametrize("centered", [True, False])
# n 2051: the latent_rows copy runs two whole blocks of 1024 latents and a partial one
@pytest.mark.parametrize(
    ("layout", "n"),
    [("direct", 7), ("latent_rows", 7), ("latent_rows", 2051), ("latent_columns", 2051)],
)
def test_affine_encoder_gradients_equal_autodiff(shape, centered: bool, layout, n) -> None:
    x, center, W, b, probe = _inputs(shape, n)
    c = center if centered else None

    def plain(center, W, b):
        return jnp.sum(probe * jnp.tanh((x - center if centered else x) @ W + b))

    def ours(center, W, b):
        return jnp.sum(
            probe * jnp.tanh(affine_encoder(x, center if centered else None, W, b, layout))
        )

    def computed(center, W, b):
        value = jax.lax.stop_gradient((x - center if centered else x) @ W)
        out = computed_affine_encoder(value, x, center if centered else None, W, b, layout)
        return jnp.sum(probe * jnp.tanh(out))

    expected = jax.grad(plain, argnums=(0, 1, 2))(center, W, b)
    assert_close(
        affine_encoder(x, c, W, b, layout), (x - center if centered else x) @ W + b, atol=1e-5
    )
    for fn in (ours, computed):
        got = jax.grad(fn, argnums=(0, 1, 2))(center, W, b)
        for name, e, g in zip(("center", "W", "b"), expected, got, strict=True):
            if name == "center" and not centered:
                continue  # not an input then: autodiff gives zeros, ours nothing
            assert g.shape == e.shape and g.dtype == e.dtype, name
            assert_close(g, e, atol=1e-4, rtol=1e-5)


def test_column_sum_equals_numpy() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((513, 37)).astype(np.float32)
    got = column_sum(jnp.asarray(a))
    assert got.dtype == jnp.float32 and got.shape == (37,)
    assert_close(got, a.astype(np.float64).sum(0), atol=1e-4)
    ints = (rng.random((4097, 5)) < 0.5).astype(np.float32)  # counts stay exact
    assert np.array_equal(np.asarray(column_sum(jnp.asarray(ints))), ints.sum(0))


def test_firing_stats_count_columns_and_mean_rows() -> None:
    rng = np.random.default_rng(2)
    f = np.where(rng.random((300, 40)) < 0.2, rng.random((300, 40)), 0).astype(np.float32)
    f[0, :2] = [-2.0, 3e-38]  # negative and tiny values count
    counts, l0 = firing_stats(jnp.asarray(f))
    assert np.array_equal(np.asarray(counts), (f != 0).sum(0))
    assert float(l0) == pytest.approx((f != 0).sum(1).mean(), rel=1e-6)


def test_standard_l1_at_p1_equals_the_per_token_norm() -> None:
    """The standard SAE's L1 loss at p = 1 is l1 · Σ_i ||W_dec,i|| · mean_b f_bi; it must
    equal (value and gradients) l1 · mean_b ||f_b ⊙ norms||_1, SAELens's form."""
    import jsae
    from jsae.architectures import get_architecture
    from jsae.architectures.base import ForwardPass, TrainContext, TrainInputs
    from jsae.training.config import SAESettings

    rng = np.random.default_rng(3)
    f = jnp.asarray(np.maximum(rng.standard_normal((64, 12)), 0), jnp.float32)
    W_dec = jnp.asarray(rng.standard_normal((12, 5)), jnp.float32)
    cfg = jsae.SAEConfig(architecture="standard", d_in=5, d_sae=12)
    ctx = TrainContext(settings=SAESettings(d_in=5, d_sae=12, lp_norm=1.0), mesh=None)
    inputs = TrainInputs(coefficients={"l1": jnp.float32(0.7)}, dead_mask=None)
    arch = get_architecture("standard")

    def ours(f, W_dec):
        fwd = ForwardPass(*([None] * 6), f, *([None] * 3))
        return arch.aux_losses(cfg, ctx, {"W_dec": W_dec}, fwd, inputs)["l1_loss"]

    def per_token(f, W_dec):
        return 0.7 * jnp.mean(lp_norm(f * jnp.linalg.norm(W_dec, axis=-1), 1.0))

    assert_close(ours(f, W_dec), per_token(f, W_dec), rtol=1e-6)
    for g, e in zip(
        jax.grad(ours, (0, 1))(f, W_dec), jax.grad(per_token, (0, 1))(f, W_dec), strict=True
    ):
        assert_close(g, e, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("layout", ["latent_rows", "latent_columns"])
def test_gradient_copies_only_where_latents_are_unsplit(layout: str) -> None:
    assert TrainContext(None, None, layout).weight_grad_layout == layout  # one device
    assert TrainContext(None, parallel.make_mesh(8, 1), layout).weight_grad_layout == layout
    # the copies loop over latent blocks: with latents split over "model" it stays a plain dot
    assert TrainContext(None, parallel.make_mesh(2, 4), layout).weight_grad_layout == "direct"
