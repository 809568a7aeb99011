"""AuxK on compacted dead-latent columns (jsae.architectures.auxk) equals AuxK over every latent.

The reference is the plain full-width formula: each token's k dead latents with the largest
scores reconstruct the residual. A callback in the pre-activation records the width of the
branch that ran, so a dead count routed to the wrong bucket shows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsae.architectures import auxk
from jsae.architectures.auxk import auxk_loss, bucket_widths
from jsae.architectures.base import TrainContext
from jsae.architectures.topk import dead_latent_auxk
from jsae.training.config import SAESettings

B, D_IN, D_SAE, K = 16, 6, 2048, 3  # buckets of 256, 512 and 1024 dead latents


def test_bucket_widths_double_up_to_a_quarter_of_d_sae() -> None:
    assert bucket_widths(16384, 384) == (384, 768, 1536, 3072, 6144)
    assert bucket_widths(2048, 3) == (256, 512, 1024)
    assert bucket_widths(256, 3) == ()  # nothing to gain: every dead count takes the full loss


def _problem(n_dead: int, rescale: bool):
    rng = np.random.default_rng(n_dead)
    x = jnp.asarray(rng.standard_normal((B, D_IN)), jnp.float32)
    params = {
        "W_enc": jnp.asarray(rng.standard_normal((D_IN, D_SAE)), jnp.float32),
        "b_enc": jnp.asarray(rng.standard_normal(D_SAE) * 0.1, jnp.float32),
        "W_dec": jnp.asarray(rng.standard_normal((D_SAE, D_IN)) * 0.3, jnp.float32),
        "b_dec": jnp.zeros((D_IN,), jnp.float32),
    }
    dead = np.zeros(D_SAE, bool)
    dead[rng.choice(D_SAE, n_dead, replace=False)] = True
    residual = jnp.asarray(rng.standard_normal((B, D_IN)), jnp.float32)
    if n_dead > 1:  # a tie between two dead latents on every token: lower index first
        a, b = np.flatnonzero(dead)[:2]
        params["W_enc"] = params["W_enc"].at[:, b].set(params["W_enc"][:, a])
        params["b_enc"] = params["b_enc"].at[b].set(params["b_enc"][a])
        params["W_dec"] = params["W_dec"].at[b].set(params["W_dec"][a] * 1.5)
    return x, params, jnp.asarray(dead), residual


def _reference(x, params, dead, residual, rescale: bool) -> jax.Array:
    if not bool(jnp.any(dead)):
        return jnp.zeros((), jnp.float32)  # SAELens: no AuxK without dead latents
    norms = jnp.linalg.norm(params["W_dec"], axis=-1)
    pre = x @ params["W_enc"] + params["b_enc"]  # [B, d_sae]
    if rescale:
        pre = pre * norms
    _, top = jax.lax.top_k(jnp.where(dead, jax.lax.stop_gradient(pre), -jnp.inf), K)
    chosen = jnp.zeros(pre.shape, bool).at[jnp.arange(B)[:, None], top].set(True) & dead
    acts = jnp.where(chosen, pre, 0)
    if rescale:
        acts = acts / norms
    return jnp.mean(jnp.sum((acts @ params["W_dec"] - residual) ** 2, -1))


def _jsae(x, params, dead, residual, rescale: bool, ran: list[int]) -> jax.Array:
    norms = jnp.linalg.norm(params["W_dec"], axis=-1)
    pre = x @ params["W_enc"] + params["b_enc"]  # what the forward pass ranks
    pre = pre * norms if rescale else pre

    def encode_at(p, x, cols):
        width = D_SAE if cols is None else cols.shape[0]
        jax.debug.callback(lambda: ran.append(width))  # runs in the taken branch only
        if cols is None:
            return x @ p["W_enc"] + p["b_enc"]
        return x @ p["W_enc"][:, cols] + p["b_enc"][cols]

    return auxk_loss(dead, K, residual, params, x, pre, encode_at, rescale)


@pytest.mark.parametrize(
    ("rescale", "column_sum"),
    [(True, "scatter"), (False, "scatter"), (True, "dense")],
    ids=["rescaled", "plain", "rescaled-dense-sum"],
)
@pytest.mark.parametrize("n_dead", [0, 1, 2, 200, 256, 257, 1024, 1025, 2048])
def test_compacted_auxk_equals_the_full_width_loss(
    n_dead: int, rescale: bool, column_sum: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`column_sum`: the rescaled decoder-norm gradient's sum as CPUs run it (a scatter-add)
    and as GPUs and TPUs do (a dense column sum)."""
    platforms = (jax.default_backend(),) if column_sum == "scatter" else ()
    monkeypatch.setattr(auxk, "SCATTER_SUM_PLATFORMS", platforms)
    x, params, dead, residual = _problem(n_dead, rescale)
    ran: list[int] = []
    loss, grads = jax.jit(jax.value_and_grad(lambda p: _jsae(x, p, dead, residual, rescale, ran)))(
        params
    )
    jax.effects_barrier()
    want = next(w for w in (*bucket_widths(D_SAE, K), D_SAE) if w >= n_dead) if n_dead else None
    assert set(ran) == ({want} if want else set()), "the smallest bucket holding them, only"
    loss_r, grads_r = jax.value_and_grad(lambda p: _reference(x, p, dead, residual, rescale))(
        params
    )
    np.testing.assert_allclose(float(loss), float(loss_r), rtol=1e-5, atol=1e-6)
    for name in params:
        np.testing.assert_allclose(grads[name], grads_r[name], rtol=1e-4, atol=1e-5)
    if n_dead:  # dead latents learn through AuxK; live ones get nothing from it
        assert np.abs(np.asarray(grads["W_enc"])[:, np.asarray(dead)]).sum() > 0
    assert np.all(np.asarray(grads["W_enc"])[:, ~np.asarray(dead)] == 0)


def test_near_tied_dead_latents_are_ranked_by_the_full_width_norms() -> None:
    """Dead latents in groups of 5 share encoder columns; their decoder rows are rolled copies,
    so their norms are equal but may differ in the last bit depending on how they are computed.
    TopK's AuxK must rank by the norms the forward pass uses (full width), not by norms of the
    gathered rows, or it picks other latents than the full-width loss."""
    settings = SAESettings(d_in=8, d_sae=1024, architecture="topk", k=4, aux_loss_coefficient=1.0)
    cfg, ctx = settings.sae_config(), TrainContext(settings)
    rng = np.random.default_rng(256)
    W_enc = rng.standard_normal((8, 1024)).astype(np.float32)
    b_enc = (rng.standard_normal(1024) * 0.1).astype(np.float32)
    W_dec = (rng.standard_normal((1024, 8)) * 0.3).astype(np.float32)
    dead = np.zeros(1024, bool)
    dead[rng.choice(1024, 256, replace=False)] = True
    idx = np.flatnonzero(dead)
    for i, j in enumerate(idx):
        src = idx[i % 5]
        W_enc[:, j], b_enc[j], W_dec[j] = W_enc[:, src], b_enc[src], np.roll(W_dec[src], i)
    params = {
        "W_enc": jnp.asarray(W_enc),
        "b_enc": jnp.asarray(b_enc),
        "W_dec": jnp.asarray(W_dec),
        "b_dec": jnp.zeros(8, jnp.float32),
    }
    x = jnp.asarray(rng.standard_normal((32, 8)), jnp.float32)
    dead = jnp.asarray(dead)

    def jsae_loss(p):
        norms = jnp.linalg.norm(p["W_dec"], axis=-1)  # the forward pass's pre-activation:
        pre = ((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]) * norms  # ranked, not differentiated
        return dead_latent_auxk(cfg, ctx, p, x, x, jnp.zeros_like(x), pre, dead)

    def reference(p):  # every latent; k_aux = d_in // 2 = 4; scale min(256 / 4, 1) = 1
        norms = jnp.linalg.norm(p["W_dec"], axis=-1)
        pre = ((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]) * norms
        _, top = jax.lax.top_k(jnp.where(dead, jax.lax.stop_gradient(pre), -jnp.inf), 4)
        chosen = jnp.zeros(pre.shape, bool).at[jnp.arange(32)[:, None], top].set(True)
        acts = jnp.where(chosen & dead, pre, 0) / norms
        return jnp.mean(jnp.sum((acts @ p["W_dec"] - x) ** 2, -1))

    got, got_grads = jax.jit(jax.value_and_grad(jsae_loss))(params)
    want, want_grads = jax.jit(jax.value_and_grad(reference))(params)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-4)
