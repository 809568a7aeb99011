"""BatchTopK's (row, column, value) training path against the dense path it replaces.

The pair kernels are checked against dense matmuls and autodiff (closed form); the sparse
training forward against the dense `train_forward` on the same weights and batch, with token
norms that vary (so a few tokens take many latents and others none), with and without decoder-
norm rescaling, run-time normalisation, Matryoshka levels, dead latents and a batch with fewer
positive pre-activations than kept slots; and whole runs through the Trainer.
SAELens parity of the same path is in test_train_saelens.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

import jsae
import jsae.sparse
from jsae import parallel
from jsae.architectures.base import TrainContext, TrainInputs
from jsae.architectures.batchtopk import uses_sparse_batch_training
from jsae.sparse import pair_decode, pair_encode
from jsae.training.config import SAESettings


def _pairs(rng: np.random.Generator, n_rows: int, n_cols: int, n_pairs: int):
    flat = np.sort(rng.choice(n_rows * n_cols, n_pairs, replace=False))
    return jnp.asarray(flat // n_cols), jnp.asarray(flat % n_cols)


@pytest.mark.parametrize("chunk", [5, 16384])  # several chunks with padding, and one chunk
def test_pair_kernels_equal_dense_matmuls_and_their_gradients(monkeypatch, chunk: int) -> None:
    monkeypatch.setattr(jsae.sparse, "PAIR_CHUNK", chunk)
    rng = np.random.default_rng(0)
    n_rows, d_sae, d = 6, 20, 4
    rows, cols = _pairs(rng, n_rows, d_sae, 23)
    vals = jnp.asarray(rng.normal(size=23).astype(np.float32))
    W_dec = jnp.asarray(rng.normal(size=(d_sae, d)).astype(np.float32))
    x = jnp.asarray(rng.normal(size=(n_rows, d)).astype(np.float32))
    W_enc = jnp.asarray(rng.normal(size=(d, d_sae)).astype(np.float32))
    b_enc = jnp.asarray(rng.normal(size=d_sae).astype(np.float32))
    target = jnp.asarray(rng.normal(size=(n_rows, d)).astype(np.float32))

    def dense_f(v):  # [n_rows, d_sae] with the pairs' values
        return jnp.zeros((n_rows, d_sae)).at[rows, cols].set(v)

    def sparse_loss(v, W):
        return jnp.sum((pair_decode(v, rows, cols, W, n_rows) - target) ** 2)

    def dense_loss(v, W):
        return jnp.sum((dense_f(v) @ W - target) ** 2)

    assert_close(pair_decode(vals, rows, cols, W_dec, n_rows), dense_f(vals) @ W_dec, atol=1e-5)
    got = jax.grad(sparse_loss, argnums=(0, 1))(vals, W_dec)
    want = jax.grad(dense_loss, argnums=(0, 1))(vals, W_dec)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, atol=1e-4, rtol=1e-5)

    center = jnp.asarray(rng.normal(size=d).astype(np.float32))  # b_dec
    h = (x - center) @ W_enc + b_enc
    weights = jnp.asarray(rng.normal(size=23).astype(np.float32))

    def enc_sparse(c, W, b):
        return jnp.sum(weights * jnp.sin(pair_encode(h, x, c, W, b, rows, cols)))

    def enc_dense(c, W, b):
        return jnp.sum(weights * jnp.sin(((x - c) @ W + b)[rows, cols]))

    got = jax.grad(enc_sparse, argnums=(0, 1, 2))(center, W_enc, b_enc)
    want = jax.grad(enc_dense, argnums=(0, 1, 2))(center, W_enc, b_enc)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_gather_encode_equals_the_dense_encoder_and_its_gradients() -> None:
    """TopK's (value, index) encoder: values and the gradients of b_dec (as `center`), W_enc
    and b_enc equal the dense pre-activation's, including a latent selected by many rows."""
    from jsae.sparse import gather_encode

    rng = np.random.default_rng(1)
    n, d, d_sae, k = 9, 5, 12, 3
    x = jnp.asarray(rng.normal(size=(n, d)).astype(np.float32))
    center = jnp.asarray(rng.normal(size=d).astype(np.float32))
    W_enc = jnp.asarray(rng.normal(size=(d, d_sae)).astype(np.float32))
    b_enc = jnp.asarray(rng.normal(size=d_sae).astype(np.float32))
    idx = np.stack([rng.choice(d_sae, k, replace=False) for _ in range(n)])
    idx[:, 0] = 4  # one latent in every row
    idx = jnp.asarray(idx)
    weights = jnp.asarray(rng.normal(size=(n, k)).astype(np.float32))
    h = (x - center) @ W_enc + b_enc

    def sparse(c, W, b):
        return jnp.sum(weights * jnp.sin(gather_encode(h, x, c, W, b, idx)))

    def dense(c, W, b):
        return jnp.sum(weights * jnp.sin(jnp.take_along_axis((x - c) @ W + b, idx, axis=-1)))

    assert_close(gather_encode(h, x, center, W_enc, b_enc, idx), jnp.take_along_axis(h, idx, 1))
    got = jax.grad(sparse, argnums=(0, 1, 2))(center, W_enc, b_enc)
    want = jax.grad(dense, argnums=(0, 1, 2))(center, W_enc, b_enc)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "shape", [(100, 3), (2048, 5), (3000, 7), (5, 2048), (7, 3000)]
)  # one block; whole and partial blocks of rows, then of columns
def test_transposed_equals_the_transpose(shape: tuple[int, int]) -> None:
    from jsae.sparse import transposed

    a = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    got = jax.jit(transposed)(jnp.asarray(a))
    assert got.shape == shape[::-1]
    np.testing.assert_array_equal(np.asarray(got), a.T)


def _forward(settings: SAESettings, params, buffers, x, dead):
    cfg = settings.sae_config()
    arch = jsae.get_architecture(cfg.architecture)
    ctx = TrainContext(settings)
    inputs = TrainInputs({}, dead)

    def loss(p):
        out = arch.train_forward(cfg, ctx, p, buffers, x, x, inputs)
        return out.loss, out

    (total, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return total, out, grads, arch.update_buffers(cfg, ctx, buffers, out.extras)


CASES = {
    "batchtopk": {"architecture": "batchtopk", "k": 6},
    "no rescale, no b_dec": {
        "architecture": "batchtopk",
        "k": 3.5,
        "rescale_acts_by_decoder_norm": False,
        "apply_b_dec_to_input": False,
    },
    "layer_norm": {"architecture": "batchtopk", "k": 4, "normalize_activations": "layer_norm"},
    "matryoshka": {"architecture": "matryoshka_batchtopk", "k": 5, "matryoshka_widths": [8, 40]},
    "matryoshka, AuxK per level": {
        "architecture": "matryoshka_batchtopk",
        "k": 5,
        "matryoshka_widths": [8, 40],
        "use_matryoshka_aux_loss": True,
    },
    "matryoshka, AuxK per level, no rescale": {
        "architecture": "matryoshka_batchtopk",
        "k": 4,
        "matryoshka_widths": [4, 16, 64],
        "use_matryoshka_aux_loss": True,
        "rescale_acts_by_decoder_norm": False,
    },
    "few positives": {"architecture": "batchtopk", "k": 40, "bias": -0.6},
}


@pytest.mark.parametrize("case", list(CASES))
def test_sparse_batchtopk_equals_dense(case: str) -> None:
    spec = dict(CASES[case])
    bias = spec.pop("bias", 0.0)
    d_in, d_sae, batch = 12, 96, 32
    rng = np.random.default_rng(3)
    scale = rng.lognormal(0.0, 0.8, size=(batch, 1))  # a few tokens take most of the latents
    x = jnp.asarray((rng.normal(size=(batch, d_in)) * scale + 0.3).astype(np.float32))
    base = SAESettings(d_in=d_in, d_sae=d_sae, aux_loss_coefficient=0.5, **spec)
    cfg = base.sae_config()
    arch = jsae.get_architecture(cfg.architecture)
    params = arch.train_init_params(cfg, base, jax.random.key(1))
    params["W_dec"] = params["W_dec"] * jnp.asarray(rng.uniform(0.5, 2.0, size=(d_sae, 1)))
    params["b_dec"] = jnp.asarray(rng.normal(size=d_in).astype(np.float32)) * 0.1
    params["b_enc"] = jnp.full((d_sae,), bias, jnp.float32)
    buffers = {"topk_threshold": jnp.float32(0.2)}
    dead = jnp.asarray(rng.random(d_sae) < 0.3)

    dense = _forward(
        dataclasses.replace(base, use_sparse_activations=False), params, buffers, x, dead
    )
    sparse = _forward(
        dataclasses.replace(base, use_sparse_activations=True), params, buffers, x, dead
    )
    (t_d, out_d, g_d, buf_d), (t_s, out_s, g_s, buf_s) = dense, sparse
    counts = np.asarray(out_d.fire_counts)
    assert counts.sum() > 0
    if case == "few positives":
        assert counts.sum() < int(spec["k"] * batch), "the case must leave kept slots empty"
    assert set(out_s.losses) == set(out_d.losses)
    for name, value in out_d.losses.items():
        assert_close(out_s.losses[name], value, atol=1e-5, rtol=1e-5, what=f"{case}: {name}")
    assert float(out_d.losses["auxiliary_reconstruction_loss"]) > 0, "AuxK must be exercised"
    assert_close(t_s, t_d, atol=1e-5, rtol=1e-5)
    assert_close(out_s.x_hat, out_d.x_hat, atol=1e-5, rtol=1e-5)
    for name, g in g_d.items():
        assert_close(g_s[name], g, atol=1e-5, rtol=1e-4, what=f"{case}: d/d{name}")
    assert np.array_equal(np.asarray(out_s.fire_counts), counts)
    assert_close(out_s.l0, out_d.l0)
    assert_close(buf_s["topk_threshold"], buf_d["topk_threshold"], what="threshold EMA")


def test_sparse_and_dense_batchtopk_runs_end_equal() -> None:
    rng = np.random.default_rng(0)
    batches = [
        (rng.normal(size=(32, 16)) * rng.lognormal(0, 0.5, (32, 1))).astype(np.float32)
        for _ in range(12)
    ]
    config = {
        "architecture": "batchtopk",
        "d_in": 16,
        "d_sae": 64,
        "k": 1,
        "lr": 3e-3,
        "train_batch_size_tokens": 32,
        "training_tokens": 32 * 12,
        "dead_feature_window": 1,
        "log_to_wandb": False,
        "progress_bar": False,
        "checkpoint_path": None,
        "output_path": None,
    }
    runs = {}
    for sparse in (False, True):
        trainer = jsae.Trainer({**config, "use_sparse_activations": sparse}, iter(batches))
        trainer.fit()
        runs[sparse] = trainer
    assert int(np.sum(np.asarray(runs[False].state.since_fired) > 1)) > 0, "AuxK must run"
    for name, value in runs[False].sae.params.items():
        assert_close(runs[True].sae.params[name], value, atol=2e-5, rtol=2e-4, what=name)
    for field in ("fire_counts", "since_fired"):
        assert np.array_equal(
            np.asarray(getattr(runs[True].state, field)),
            np.asarray(getattr(runs[False].state, field)),
        )


def test_sparse_batchtopk_is_chosen_where_it_applies() -> None:
    def chosen(mesh=None, **kw) -> bool:
        settings = SAESettings(**{"architecture": "batchtopk", "d_in": 8, "k": 4, **kw})
        return uses_sparse_batch_training(settings.sae_config(), TrainContext(settings, mesh), 64)

    assert chosen(d_sae=4096) and not chosen(d_sae=1024)  # auto: wide SAEs only
    assert chosen(d_sae=64, use_sparse_activations=True)
    assert not chosen(d_sae=8192, use_sparse_activations=False)
    assert not chosen(parallel.make_mesh(2, 1), d_sae=8192)  # the batch is split: dense
    matryoshka = {"architecture": "matryoshka_batchtopk", "matryoshka_widths": [16, 64]}
    assert chosen(d_sae=64, use_sparse_activations=True, **matryoshka)
    assert chosen(d_sae=64, use_sparse_activations=True, use_matryoshka_aux_loss=True, **matryoshka)


def test_sparse_paths_are_the_default_on_cpu_only() -> None:
    """The CPU measurements that make the sparse paths the default say nothing about GPUs and
    TPUs, where dense matmuls are cheap next to gathers and scatter-adds: there None is dense."""
    from jsae.sparse import mesh_platform, sparse_by_default

    assert sparse_by_default(4096, "cpu") and not sparse_by_default(2048, "cpu")
    assert not sparse_by_default(1 << 20, "gpu") and not sparse_by_default(1 << 20, "tpu")
    assert mesh_platform(parallel.make_mesh(1, 1)) == "cpu" and mesh_platform(None) is None
    assert sparse_by_default(8192) == (jax.default_backend() == "cpu")


def test_sparse_kernels_sum_bf16_terms_in_float32() -> None:
    """One latent fires on all 4096 tokens: its decoder row's and encoder column's gradients,
    and the decode, sum 4096 bf16 terms. Summed in float32 and rounded once they stay at bf16
    resolution of the exact sum (summed in bf16 they were ~30% off), for the TopK (value,
    index) kernels and the BatchTopK pair kernels alike."""
    from jsae.sparse import gather_decode, gather_encode

    rng = np.random.default_rng(0)
    n, d, d_sae, k = 4096, 16, 8, 2
    bf = jnp.bfloat16
    x = jnp.asarray(rng.normal(size=(n, d)), bf)
    W_enc = jnp.asarray(rng.normal(size=(d, d_sae)) / 4, bf)
    W_dec = jnp.asarray(rng.normal(size=(d_sae, d)) / 4, bf)
    b_enc = jnp.zeros(d_sae, bf)
    idx = jnp.asarray(np.stack([np.zeros(n, int), rng.integers(1, d_sae, n)], 1))  # [n, k]
    vals = jnp.asarray(rng.uniform(0.5, 1.5, (n, k)), bf)
    g = jnp.asarray(rng.normal(size=(n, d)), bf)
    g_lat = jnp.asarray(rng.normal(size=(n, k)), bf)
    f32 = lambda a: np.asarray(a, np.float64)  # noqa: E731

    def rel(got, want) -> float:
        return float(np.abs(f32(got) - want).max() / np.abs(want).max())

    onehot = np.zeros((n, k, d_sae))
    np.put_along_axis(onehot, np.asarray(idx)[..., None], 1.0, axis=-1)
    dense_f = np.einsum("nk,nkc->nc", f32(vals), onehot)  # [n, d_sae]
    want_decode = dense_f @ f32(W_dec)
    want_dW_dec = dense_f.T @ f32(g)
    got = gather_decode(vals, idx, W_dec)
    assert got.dtype == bf and rel(got, want_decode) < 1e-2
    _, vjp = jax.vjp(lambda v, W: gather_decode(v, idx, W), vals, W_dec)
    dvals, dW_dec = vjp(g)
    assert dW_dec.dtype == bf and rel(dW_dec, want_dW_dec) < 1e-2
    assert rel(dvals, np.einsum("nkc,cd,nd->nk", onehot, f32(W_dec), f32(g))) < 1e-2

    center = jnp.zeros(d, bf)
    hidden = jax.lax.stop_gradient(x @ W_enc + b_enc)
    _, vjp = jax.vjp(lambda c, W, b: gather_encode(hidden, x, c, W, b, idx), center, W_enc, b_enc)
    d_center, dW_enc, db = vjp(g_lat)
    dense_g = np.einsum("nk,nkc->nc", f32(g_lat), onehot)  # [n, d_sae]
    assert dW_enc.dtype == bf and rel(dW_enc, f32(x).T @ dense_g) < 1e-2
    assert rel(d_center, -(dense_g @ f32(W_enc).T).sum(0)) < 1e-2
    assert rel(db, dense_g.sum(0)) < 1e-2

    rows = jnp.repeat(jnp.arange(n), k)
    cols = idx.reshape(-1)
    _, vjp = jax.vjp(lambda v, W: pair_decode(v, rows, cols, W, n), vals.reshape(-1), W_dec)
    assert rel(vjp(g)[1], want_dW_dec) < 1e-2
    _, vjp = jax.vjp(lambda W: pair_encode(hidden, x, center, W, b_enc, rows, cols), W_enc)
    assert rel(vjp(g_lat.reshape(-1))[0], f32(x).T @ dense_g) < 1e-2
