"""The standard SAE's active-pair training path (`jsae.architectures.relu_pairs`) against the
dense path it replaces.

The compaction of positive entries is checked against numpy; the step's two losses (active
pairs, dense with the pre-activation reused) against the plain dense `train_forward` on the same
weights and batch, below and above the pair capacity, with the settings that change the loss
(Lp norm, b_dec subtraction, run-time normalisation, mixed precision); and whole runs through the
Trainer. SAELens parity of the same path is in test_train_saelens.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

import jsae
import jsae.sparse
from jsae import parallel
from jsae.architectures import relu_pairs
from jsae.architectures.base import TrainContext, TrainInputs
from jsae.normalization import normalize_in
from jsae.sparse import pair_decode, pair_encode
from jsae.training.config import SAESettings
from jsae.training.cut import positive_counts, positive_positions


@pytest.mark.parametrize(("shape", "capacity"), [((7, 100), 300), ((16, 64), 40), ((5, 33), 900)])
def test_positive_positions_are_numpys_nonzero_in_order(shape, capacity) -> None:
    rng = np.random.default_rng(sum(shape))
    s = (rng.normal(size=shape) - 0.8).astype(np.float32)
    s[1] = 0  # a row with none
    s[2, :7] = 1e-3  # a run of positives across a block boundary

    @jax.jit
    def compact(s):
        counts = positive_counts(s)
        return *positive_positions(s, counts, capacity), jnp.sum(counts)

    rows, cols, count = (np.asarray(a) for a in compact(jnp.asarray(s)))
    want_rows, want_cols = np.nonzero(s > 0)
    used = min(capacity, len(want_rows))
    assert count == len(want_rows)
    assert np.array_equal(rows[:used], want_rows[:used])
    assert np.array_equal(cols[:used], want_cols[:used])
    # padding keeps rows sorted and columns in range (the pair kernels rely on both)
    assert np.all(np.diff(rows) >= 0) and cols.min() >= 0 and cols.max() < shape[1]


D_IN, D_SAE, BATCH = 12, 256, 48  # capacity: 48 · 256 / 96 = 128 pairs (L0 2.7)

CASES = {
    "l1": {},
    "lp2": {"lp_norm": 2.0},
    "no b_dec": {"apply_b_dec_to_input": False},
    "layer_norm": {"normalize_activations": "layer_norm"},
    "bfloat16": {"dtype": "bfloat16"},
}


def _setup(spec: dict, l0: float):
    """Settings, weights and a batch whose pre-activations have about `l0` positives per token
    (token norms vary, so some tokens hold several latents and others none)."""
    rng = np.random.default_rng(5)
    scale = rng.lognormal(0.0, 0.7, size=(BATCH, 1))
    x = jnp.asarray((rng.normal(size=(BATCH, D_IN)) * scale + 0.2).astype(np.float32))
    settings = SAESettings(
        architecture="standard", d_in=D_IN, d_sae=D_SAE, use_sparse_activations=True, **spec
    )
    cfg = settings.sae_config()
    arch = jsae.get_architecture("standard")
    params = arch.train_init_params(cfg, settings, jax.random.key(2))
    params["W_dec"] = params["W_dec"] * jnp.asarray(rng.uniform(0.5, 2.0, size=(D_SAE, 1)))
    params["b_dec"] = (jnp.asarray(rng.normal(size=D_IN)) * 0.05).astype(params["b_dec"].dtype)
    x_norm, _ = normalize_in(cfg.normalize_activations, x)
    x_in = x_norm - params["b_dec"] if cfg.apply_b_dec_to_input else x_norm
    pre = np.asarray(x_in, np.float32) @ np.asarray(params["W_enc"], np.float32)
    cut = np.quantile(pre, 1 - l0 / D_SAE)
    params["b_enc"] = jnp.full((D_SAE,), -cut, params["b_enc"].dtype)
    return settings, cfg, arch, params, x


def _value_and_grad(loss_fn, params):
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("l0", [1.5, 40.0])
def test_active_pairs_and_reused_pre_activation_equal_the_dense_step(case: str, l0: float):
    settings, cfg, arch, params, x = _setup(CASES[case], l0)
    ctx = TrainContext(settings)
    inputs = TrainInputs({"l1": jnp.float32(0.8)}, jnp.zeros(D_SAE, bool))
    which, losses = arch.train_losses(cfg, ctx, params, lambda p: p, {}, x, x, inputs)
    assert len(losses) == 2

    def plain(p):
        out = arch.train_forward(cfg, ctx, p, {}, x, x, inputs)
        return out.loss, out

    (want, want_out), want_grads = _value_and_grad(plain, params)
    counts = np.asarray(want_out.fire_counts)
    n_active = int(counts.sum())
    capacity = relu_pairs.pair_capacity(BATCH, D_SAE)
    assert (n_active <= capacity) == (l0 < 2), "the case must fall on its side of the capacity"
    assert int(which) == (0 if n_active <= capacity else 1)
    tol = {"atol": 2e-2, "rtol": 2e-2} if case == "bfloat16" else {"atol": 2e-5, "rtol": 1e-4}
    # the dense way always applies; the pair way only where the pairs fit the capacity
    ways = {"dense": losses[1], **({"pairs": losses[0]} if n_active <= capacity else {})}
    for way, loss_fn in ways.items():
        (total, out), grads = _value_and_grad(loss_fn, params)
        what = f"{case}, L0 {l0}, {way}"
        assert set(out.losses) == {"mse_loss", "l1_loss"}
        for name, value in want_out.losses.items():
            assert_close(out.losses[name], value, **tol, what=f"{what}: {name}")
        assert_close(total, want, **tol, what=f"{what}: total")
        assert_close(out.x_hat, want_out.x_hat, **tol, what=f"{what}: x_hat")
        for name, g in want_grads.items():
            assert grads[name].dtype == g.dtype
            assert_close(grads[name], g, **tol, what=f"{what}: d/d{name}")
        assert np.array_equal(np.asarray(out.fire_counts), counts), what
        assert_close(out.l0, want_out.l0, what=f"{what}: l0")
    assert n_active > 0 and np.any(np.asarray(want_grads["W_enc"]) != 0)


def test_a_step_over_capacity_takes_the_dense_way_and_below_it_the_pairs() -> None:
    """The branch taken follows the batch's count (a callback in the pair kernel records it)."""
    ran = []
    original = relu_pairs.pair_decode

    def recorded(*args):
        jax.debug.callback(lambda: ran.append("pairs"))
        return original(*args)

    _, cfg, _, params, x = _setup({}, 1.5)
    trainer = jsae.Trainer(
        {
            "architecture": "standard",
            "d_in": D_IN,
            "d_sae": D_SAE,
            "use_sparse_activations": True,
            "train_batch_size_tokens": BATCH,
            "training_tokens": BATCH * 4,
            "log_to_wandb": False,
            "checkpoint_path": None,
            "output_path": None,
            "progress_bar": False,
        },
        [],
        init=jsae.SAE.from_params(cfg, params),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(relu_pairs, "pair_decode", recorded)
        trainer.step(x)
        jax.effects_barrier()
        assert ran == ["pairs"]
        dense_batch = x * 40  # most pre-activations now positive: over the capacity
        trainer.step(dense_batch)
        jax.effects_barrier()
        assert ran == ["pairs"], "a batch over the capacity must take the dense way"


def test_training_on_active_pairs_ends_where_dense_training_does() -> None:
    """Whole runs through the Trainer: L1 drives L0 from about half the latents down into the
    pair capacity, so the run crosses from the dense way to the pairs."""
    rng = np.random.default_rng(9)
    batches = [rng.normal(size=(64, 16)).astype(np.float32) for _ in range(30)]
    config = {
        "architecture": "standard",
        "d_in": 16,
        "d_sae": 512,
        "l1_coefficient": 20.0,
        "lr": 3e-3,
        "train_batch_size_tokens": 64,
        "training_tokens": 64 * 30,
        "log_to_wandb": False,
        "checkpoint_path": None,
        "output_path": None,
        "progress_bar": False,
        "seed": 3,
    }
    runs = {}
    l0s = {}
    for sparse in (False, True):
        trainer = jsae.Trainer({**config, "use_sparse_activations": sparse}, [])
        seen = []
        for batch in batches:
            metrics = trainer.step(jnp.asarray(batch))
            seen.append(float(metrics["metrics/l0"]))
        runs[sparse], l0s[sparse] = trainer, seen
    capacity_l0 = relu_pairs.pair_capacity(64, 512) / 64
    assert l0s[True][0] > capacity_l0 > l0s[True][-1], l0s[True]
    for name, value in runs[False].state.params.items():
        assert_close(runs[True].state.params[name], value, atol=2e-5, rtol=2e-4, what=name)
    assert np.array_equal(
        np.asarray(runs[True].state.fire_counts), np.asarray(runs[False].state.fire_counts)
    )


def test_active_pairs_are_chosen_where_they_apply() -> None:
    def chosen(mesh=None, **kw) -> bool:
        settings = SAESettings(**{"architecture": "standard", "d_in": 8, **kw})
        return relu_pairs.uses_active_pairs(settings.sae_config(), TrainContext(settings, mesh))

    assert chosen(d_sae=4096) and not chosen(d_sae=1024)  # auto: wide SAEs on CPU
    assert chosen(d_sae=64, use_sparse_activations=True)
    assert not chosen(d_sae=8192, use_sparse_activations=False)
    assert not chosen(parallel.make_mesh(2, 1), d_sae=8192)  # the batch is split: dense
    gated = SAESettings(architecture="gated", d_in=8, d_sae=8192)
    assert not relu_pairs.uses_active_pairs(gated.sae_config(), TrainContext(gated))


@pytest.mark.parametrize("count", [0, 5, 11, 23])  # none, one whole chunk, a partial third, all
def test_pair_kernels_with_a_count_use_exactly_the_first_pairs(monkeypatch, count: int) -> None:
    """The pair kernels' `count` (chunks after the last used pair are skipped) against the
    dense matmuls over those pairs, forward and backward, across chunk boundaries."""
    monkeypatch.setattr(jsae.sparse, "PAIR_CHUNK", 5)
    rng = np.random.default_rng(count)
    n_rows, d_sae, d, n_pairs = 6, 20, 4, 23
    flat = np.sort(rng.choice(n_rows * d_sae, n_pairs, replace=False))
    rows, cols = jnp.asarray(flat // d_sae), jnp.asarray(flat % d_sae)
    used = jnp.arange(n_pairs) < count
    vals = jnp.where(used, jnp.asarray(rng.normal(size=n_pairs).astype(np.float32)), 0)
    W_dec = jnp.asarray(rng.normal(size=(d_sae, d)).astype(np.float32))
    x = jnp.asarray(rng.normal(size=(n_rows, d)).astype(np.float32))
    W_enc = jnp.asarray(rng.normal(size=(d, d_sae)).astype(np.float32))
    b_enc = jnp.asarray(rng.normal(size=d_sae).astype(np.float32))
    center = jnp.asarray(rng.normal(size=d).astype(np.float32))  # b_dec
    h = (x - center) @ W_enc + b_enc
    n = jnp.int32(count)

    def with_count(v, W, c, W_e, b):
        z = jnp.where(used, pair_encode(h, x, c, W_e, b, rows, cols, n), 0)
        return jnp.sum(jnp.sin(pair_decode(v * z, rows, cols, W, n_rows, n)))

    def dense(v, W, c, W_e, b):
        z = jnp.where(used, ((x - c) @ W_e + b)[rows, cols], 0)
        f = jnp.zeros((n_rows, d_sae)).at[rows, cols].set(v * z)
        return jnp.sum(jnp.sin(f @ W))

    args = (vals, W_dec, center, W_enc, b_enc)
    got = jax.jit(jax.value_and_grad(with_count, argnums=(0, 1, 2, 3, 4)))(*args)
    want = jax.value_and_grad(dense, argnums=(0, 1, 2, 3, 4))(*args)
    assert_close(got[0], want[0], atol=1e-5)
    for g, w in zip(got[1], want[1], strict=True):
        assert_close(g, w, atol=1e-5, rtol=1e-5)
