"""Mixed precision (`compute_dtype="bfloat16"` with float32 parameters): bf16 matmuls, float32
master weights, Adam state and thresholds, and training that still finds the true features."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import jsae
from jsae.activations.synthetic import SyntheticActivations, SyntheticConfig, feature_recovery

BASE = {
    "d_in": 16,
    "d_sae": 64,
    "lr": 3e-3,
    "train_batch_size_tokens": 256,
    "log_to_wandb": False,
    "checkpoint_path": None,
    "output_path": None,
    "progress_bar": False,
}


def _source(seed: int = 0) -> SyntheticActivations:
    return SyntheticActivations(
        SyntheticConfig(d_in=16, n_features=32, mean_active=2.0, seed=seed), batch_size=256
    )


def _operand_dtypes(
    trainer: jsae.Trainer, x: np.ndarray, primitive: str = "dot_general"
) -> set[str]:
    """Operand dtypes of every `primitive` (a dot_general unless named) in the step's jaxpr.

    Matrix-vector products are left out: the sparse paths' b_dec gradient, W_enc @ d b_enc, is
    deliberately float32 (d b_enc is a float32 sum over the batch's selected latents)."""
    scale = jnp.float32(1.0)
    jaxpr = jax.make_jaxpr(trainer.compiled_step())(trainer.state, x, x, scale)
    found: set[str] = set()

    def visit(jpr):
        for eqn in jpr.eqns:
            vector = any(len(v.aval.shape) < 2 for v in eqn.invars)
            if eqn.primitive.name == primitive and not (primitive == "dot_general" and vector):
                found.update(str(v.aval.dtype) for v in eqn.invars)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jaxpr.jaxpr)
    return found


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "matryoshka_batchtopk"])
def test_bf16_steps_rank_latents_in_float32(architecture: str, sparse: bool) -> None:
    """Every top-k of a bf16 step (selection, AuxK) ranks float32 values (`jsae.ranking`):
    XLA's CPU top-k on bfloat16 is a sort, ~65x slower, with the same result."""
    config = {
        **BASE,
        "architecture": architecture,
        "k": 4,
        "training_tokens": 256 * 4,
        "compute_dtype": "bfloat16",
        "use_sparse_activations": sparse,
        **({"matryoshka_widths": [16, 64]} if architecture == "matryoshka_batchtopk" else {}),
    }
    trainer = jsae.Trainer(config, _source())
    x = _source().sample(256)[0]
    assert _operand_dtypes(trainer, x) == {"bfloat16"}  # the step does compute in bf16
    assert _operand_dtypes(trainer, x, "top_k") == {"float32"}


@pytest.mark.parametrize("architecture", ["standard", "jumprelu"])
def test_bf16_compute_keeps_float32_masters_and_runs_bf16_matmuls(architecture: str) -> None:
    config = {**BASE, "architecture": architecture, "training_tokens": 256 * 4}
    x = _source().sample(256)[0]
    mixed = jsae.Trainer({**config, "compute_dtype": "bfloat16"}, _source())
    assert _operand_dtypes(mixed, x) == {"bfloat16"}
    plain = jsae.Trainer(config, _source())
    assert _operand_dtypes(plain, x) == {"float32"}
    for _ in range(3):
        mixed.step()
    leaves = jax.tree.leaves((mixed.state.params, mixed.state.opt_state))
    assert all(leaf.dtype in (jnp.float32, jnp.int32) for leaf in leaves)
    assert mixed.sae.params["W_enc"].dtype == jnp.float32
    if architecture == "jumprelu":
        assert mixed.sae.params["threshold"].dtype == jnp.float32


def test_a_bf16_compute_step_tracks_the_float32_step() -> None:
    """Same init and batch: the updated weights differ at bf16 resolution, not more."""
    config = {**BASE, "architecture": "standard", "training_tokens": 256 * 4}
    x = _source().sample(256)[0]
    plain = jsae.Trainer(config, _source())
    mixed = jsae.Trainer({**config, "compute_dtype": "bfloat16"}, _source())
    p0 = {k: np.asarray(v) for k, v in plain.state.params.items()}
    loss32 = float(plain.step(x)["losses/overall_loss"])
    loss16 = float(mixed.step(x)["losses/overall_loss"])
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    for name, before in p0.items():
        d32 = np.asarray(plain.state.params[name]) - before
        d16 = np.asarray(mixed.state.params[name]) - before
        # Adam's first step moves every weight by about lr * sign(grad): the signs must agree
        agree = np.mean(np.sign(d32) == np.sign(d16))
        assert agree > 0.9, f"{name}: only {agree:.2f} of the update signs agree"


@pytest.mark.parametrize(
    ("architecture", "extra"),
    [
        ("standard", {"l1_coefficient": 0.3}),
        ("jumprelu", {"l0_coefficient": 0.3, "jumprelu_init_threshold": 0.1}),
        ("topk", {"k": 2}),
        # the sparse (row, column, value) path, with BatchTopK's usual longer run
        ("batchtopk", {"k": 2, "use_sparse_activations": True, "training_tokens": 256 * 1200}),
    ],
)
def test_bf16_compute_recovers_the_true_features(architecture: str, extra: dict) -> None:
    source = _source()
    config = {
        **BASE,
        "architecture": architecture,
        "training_tokens": 256 * 700,
        "compute_dtype": "bfloat16",
        **extra,
    }
    sae = jsae.train(config, source)
    assert sae.cfg.dtype == "float32"
    assert feature_recovery(source.features, sae.W_dec) >= 0.9


def test_unknown_compute_dtype_is_refused() -> None:
    with pytest.raises(jsae.ConfigError, match="unsupported dtype"):
        jsae.TrainConfig.from_dict({**BASE, "architecture": "standard", "compute_dtype": "fp8"})


@pytest.mark.parametrize(
    ("architecture", "extra"),
    [
        ("gated", {}),
        ("jumprelu", {"jumprelu_sparsity_loss_mode": "tanh", "pre_act_loss_coefficient": 3e-6}),
        ("topk", {"k": 4, "use_sparse_activations": True}),
        ("batchtopk", {"k": 4}),
        ("batchtopk", {"k": 4, "use_sparse_activations": True}),
        (
            "matryoshka_batchtopk",
            {"k": 4, "matryoshka_widths": [16, 64], "use_matryoshka_aux_loss": True},
        ),
        ("matryoshka_batchtopk", {"k": 4, "matryoshka_widths": [16, 64]}),
        ("jumprelu_skip_transcoder", {"d_out": 16}),
    ],
)
def test_every_loss_path_runs_in_bf16_compute(architecture: str, extra: dict) -> None:
    """dead_feature_window=1 makes latents dead quickly, so the AuxK / pre-act paths run too."""
    config = {
        **BASE,
        "architecture": architecture,
        "training_tokens": 256 * 6,
        "compute_dtype": "bfloat16",
        "dead_feature_window": 1,
        **extra,
    }
    source = _source()
    if architecture.endswith("transcoder"):
        source = SyntheticActivations(
            SyntheticConfig(d_in=16, n_features=32, mean_active=2.0, d_out=16, seed=0),
            batch_size=256,
        )
    trainer = jsae.Trainer(config, source)
    for _ in range(6):
        metrics = trainer.step()
    assert bool(metrics["finite"])
    assert np.isfinite(float(metrics["losses/overall_loss"]))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_bf16_batch_selection_inside_the_step_equals_a_top_k(monkeypatch, sparse: bool) -> None:
    """Inside a compiled bf16 step XLA may round a bf16 tensor in one fusion and not in another
    (excess precision); the counting selection must still see one set of values and keep
    exactly the batch's top k·B (a failure showed up as out-of-range positions)."""
    from jsae.ranking import top_k
    from jsae.training import selection

    mismatches: list[int] = []

    def record(got: np.ndarray, want: np.ndarray) -> None:
        mismatches.append(int(not np.array_equal(got, want)))

    def reference(scores: jax.Array, n_keep: int) -> jax.Array:
        # the bf16 values themselves: rounding made explicit, as excess precision may skip it
        flat = jax.lax.stop_gradient(scores).astype(jnp.float32).reshape(-1)
        flat = jax.lax.reduce_precision(flat, exponent_bits=8, mantissa_bits=7)
        return jnp.sort(top_k(flat, n_keep)[1])

    checked_positions = selection.batch_topk_positions
    checked_selection = selection.batch_topk_selection

    def positions(scores, n_keep):
        rows, cols = checked_positions(scores, n_keep)
        jax.debug.callback(record, rows * scores.shape[1] + cols, reference(scores, n_keep))
        return rows, cols

    def select(scores, n_keep, mesh=None):
        mask, smallest = checked_selection(scores, n_keep, mesh)
        jax.debug.callback(record, jnp.flatnonzero(mask, size=n_keep), reference(scores, n_keep))
        return mask, smallest

    monkeypatch.setattr(selection, "batch_topk_positions", positions)
    monkeypatch.setattr(selection, "batch_topk_selection", select)
    config = {
        **BASE,
        "architecture": "batchtopk",
        "k": 2,
        "training_tokens": 256 * 40,
        "compute_dtype": "bfloat16",
        "use_sparse_activations": sparse,
    }
    jsae.train(config, _source())
    assert len(mismatches) == 40 and sum(mismatches) == 0
