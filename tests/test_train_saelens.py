"""Training math against SAELens 6.54 (reference environment), and what SAELens cannot train
against closed forms.

1. Losses and gradients: SAELens builds training SAEs of every architecture with random weights,
   runs one `training_forward_pass` on a random batch with given coefficients and dead-latent
   mask, and back-propagates the total loss; jsae must give the same loss terms and gradients.
2. Whole runs: SAELens's `SAETrainer.fit` from fixed parameters over fixed batches, with
   warm-ups, cosine / restart schedules with a final decay, non-default Adam betas, clipping and
   dead-latent and sparsity windows of a few steps; jsae's Trainer must end with the same
   parameters and firing statistics.
3. Schedules: learning rates from torch's schedulers as SAELens chains them, coefficient warm-up.
4. Transcoders (no SAELens training): losses and gradients in closed form (numpy).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, run_reference
from safetensors.numpy import load_file

import jsae
from jsae.architectures import relu_pairs
from jsae.architectures.base import TrainContext, TrainInputs
from jsae.training.config import SAESettings, TrainingSettings
from jsae.training.schedules import coefficient, learning_rate


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("saelens_training")
    run_reference("saelens_training.py", "all", out)
    return out


@pytest.fixture(scope="module")
def loss_fixtures(fixtures: Path) -> Path:
    return fixtures / "losses"


@pytest.fixture(scope="module")
def trainer_fixtures(fixtures: Path) -> Path:
    return fixtures / "trainer"


@pytest.fixture(scope="module")
def schedule_fixtures(fixtures: Path) -> dict:
    return json.loads((fixtures / "schedules.json").read_text())


# the TopK family's cases that also run on the sparse (value, index) paths; the wide ones
# (d_sae 1024) run AuxK on compacted buckets of the dead latents' columns
SPARSE_CASES = [
    "topk",
    "topk_many_dead",
    "topk_no_rescale",
    "topk_no_dead",
    "batchtopk",
    "matryoshka",
    "topk_wide_few_dead",
    "topk_wide_dead",
    "batchtopk_wide_dead",
]
CASES = [
    "standard",
    "standard_lp2",
    "standard_lp_half",
    "standard_no_bdec",
    "standard_layer_norm",
    "standard_constant_norm",
    "gated",
    "jumprelu_step",
    "jumprelu_tanh",
    "jumprelu_quadratic",
    "jumprelu_ste_to_input",
    *SPARSE_CASES,
    "matryoshka_level_aux",
]


def run_jsae(case_dir: Path, *, sparse: bool | None = None, way: int | None = None):
    """jsae's loss terms and gradients for a fixture: `train_forward`, or with `way` the loss
    `Architecture.train_losses` offers at that index (which must be the one it picks)."""
    case = json.loads((case_dir / "case.json").read_text())
    settings = SAESettings(**case["settings"], use_sparse_activations=sparse)
    cfg = settings.sae_config()
    arch = jsae.get_architecture(cfg.architecture)
    state = load_file(case_dir / "params.safetensors")
    io = load_file(case_dir / "io.safetensors")
    buffers = {k: jnp.asarray(state.pop(k)) for k in arch.buffer_names()}
    params = {k: jnp.asarray(v) for k, v in state.items()}
    inputs = TrainInputs(
        coefficients={k: jnp.float32(v) for k, v in case["coefficients"].items()},
        dead_mask=jnp.asarray(io["dead_mask"] > 0),
    )
    ctx = TrainContext(settings)
    x = jnp.asarray(io["x"])

    def loss(params):
        out = arch.train_forward(cfg, ctx, params, buffers, x, x, inputs)
        return out.loss, out

    if way is not None:
        which, losses = arch.train_losses(cfg, ctx, params, lambda p: p, buffers, x, x, inputs)
        assert int(which) == way, f"{case_dir.name}: the step picks way {int(which)}, not {way}"
        loss = losses[way]
    (total, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return arch, cfg, ctx, buffers, io, total, out, grads


@pytest.mark.parametrize("case", CASES)
def test_losses_and_gradients_match_saelens(loss_fixtures: Path, case: str) -> None:
    arch, cfg, ctx, buffers, io, total, out, grads = run_jsae(loss_fixtures / case)
    expected_losses = {k.removeprefix("loss_"): v for k, v in io.items() if k.startswith("loss_")}
    assert set(out.losses) == set(expected_losses), (sorted(out.losses), sorted(expected_losses))
    for name, value in expected_losses.items():
        assert_close(out.losses[name], value, atol=2e-5, rtol=2e-5, what=f"{case}: {name}")
    assert_close(total, io["loss"], atol=2e-5, rtol=2e-5, what=f"{case}: total loss")
    nonzero = 0
    for name, g in grads.items():
        assert_close(g, io[f"grad_{name}"], atol=3e-5, rtol=3e-4, what=f"{case}: d/d{name}")
        nonzero += int(np.any(np.asarray(g) != 0))
    assert nonzero >= 3, "the case must exercise gradients"
    f = io["feature_acts"]
    assert_close(out.l0, np.mean(np.sum(f != 0, -1)), what="l0")
    assert np.array_equal(np.asarray(out.fire_counts), np.sum(f != 0, 0))
    if "topk_threshold_after" in io:
        new = arch.update_buffers(cfg, ctx, buffers, out.extras)
        assert_close(new["topk_threshold"], io["topk_threshold_after"], what="threshold EMA")


STANDARD_CASES = [case for case in CASES if case.startswith("standard")]


@pytest.mark.parametrize("case", SPARSE_CASES + STANDARD_CASES)
def test_sparse_paths_match_saelens(loss_fixtures: Path, case: str, monkeypatch) -> None:
    """The (value, index) paths with gather/scatter-add backward give SAELens's numbers too;
    so does the standard SAE's active-pair loss, given room for every positive entry."""
    way = None
    if case in STANDARD_CASES:  # about half the latents fire at initialisation
        monkeypatch.setattr(relu_pairs, "CAPACITY_FRACTION", 1.0)
        way = 0
    arch, cfg, ctx, buffers, io, _, out, grads = run_jsae(
        loss_fixtures / case, sparse=True, way=way
    )
    expected = {k.removeprefix("loss_"): v for k, v in io.items() if k.startswith("loss_")}
    assert set(out.losses) == set(expected)
    for name, value in expected.items():
        assert_close(out.losses[name], value, atol=2e-5, rtol=2e-5, what=f"sparse {case}: {name}")
    for name, g in grads.items():
        assert_close(g, io[f"grad_{name}"], atol=3e-5, rtol=3e-4, what=f"sparse {case}: {name}")
    f = io["feature_acts"]
    assert np.array_equal(np.asarray(out.fire_counts), np.sum(f != 0, 0))
    assert_close(out.l0, np.mean(np.sum(f != 0, -1)), what="l0")
    if "topk_threshold_after" in io:
        new = arch.update_buffers(cfg, ctx, buffers, out.extras)
        assert_close(new["topk_threshold"], io["topk_threshold_after"], what="threshold EMA")


def test_auxk_gradient_reaches_the_encoder(loss_fixtures: Path) -> None:
    """Dead latents get encoder gradient only through AuxK; with it off they get none."""
    case_dir = loss_fixtures / "topk"
    *_, io, _, _, grads = run_jsae(case_dir)
    dead = io["dead_mask"] > 0
    assert np.abs(np.asarray(grads["W_enc"])[:, dead]).sum() > 0
    case = json.loads((case_dir / "case.json").read_text())
    case["settings"]["aux_loss_coefficient"] = 0.0
    no_aux = case_dir.parent / "topk_no_aux"
    no_aux.mkdir(exist_ok=True)
    for name in ("params.safetensors", "io.safetensors"):
        (no_aux / name).write_bytes((case_dir / name).read_bytes())
    (no_aux / "case.json").write_text(json.dumps(case))
    *_, out, grads_off = run_jsae(no_aux)
    selected = np.asarray(out.fire_counts) > 0
    assert np.abs(np.asarray(grads_off["W_enc"])[:, dead & ~selected]).sum() == 0


# ------------------------------------------------------------------------------- transcoders


def _transcoder_case(architecture: str, rng: np.random.Generator):
    d_in, d_out, d_sae, batch = 10, 7, 40, 16
    settings = SAESettings(
        architecture=architecture, d_in=d_in, d_out=d_out, d_sae=d_sae, l1_coefficient=0.6
    )
    cfg = settings.sae_config()
    arch = jsae.get_architecture(architecture)
    params = {
        name: jnp.asarray(rng.normal(0, 0.3, shape), jnp.float32)
        for name, shape in arch.param_shapes(cfg).items()
    }
    x = jnp.asarray(rng.normal(size=(batch, d_in)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(batch, d_out)), jnp.float32)
    return settings, cfg, arch, params, x, y


@pytest.mark.parametrize("mode", ["constant_norm_rescale", "layer_norm"])
def test_gated_auxiliary_losses_live_where_the_reconstruction_does(mode: str, rng) -> None:
    """With per-token normalisation the encoder sees the same input for x and 8x, so the gate's
    L1 penalty is unchanged and its reconstruction, de-normalised as x_hat is, errs 64x as much
    in squares, as the MSE does (SAELens takes π from the raw input here; see
    docs/saelens-differences.md)."""
    settings = SAESettings(
        architecture="gated", d_in=12, d_sae=48, normalize_activations=mode, l1_coefficient=0.7
    )
    cfg = settings.sae_config()
    arch = jsae.get_architecture("gated")
    params = {
        name: jnp.asarray(rng.normal(0, 0.3, shape), jnp.float32)
        for name, shape in arch.param_shapes(cfg).items()
    }
    x = jnp.asarray(rng.normal(size=(16, 12)) + 0.5, jnp.float32)
    inputs = TrainInputs({"l1": jnp.float32(0.7)}, jnp.zeros(cfg.d_sae, bool))

    def losses(x):
        out = arch.train_forward(cfg, TrainContext(settings), params, {}, x, x, inputs)
        return {name: float(value) for name, value in out.losses.items()}

    small, large = losses(x), losses(8 * x)
    assert small["auxiliary_reconstruction_loss"] > 0 and small["l1_loss"] > 0
    assert large["mse_loss"] == pytest.approx(64 * small["mse_loss"], rel=1e-4)
    assert large["auxiliary_reconstruction_loss"] == pytest.approx(
        64 * small["auxiliary_reconstruction_loss"], rel=1e-4
    )
    assert large["l1_loss"] == pytest.approx(small["l1_loss"], rel=1e-4)


@pytest.mark.parametrize("architecture", ["transcoder", "skip_transcoder"])
def test_transcoder_loss_and_gradients_closed_form(architecture: str, rng) -> None:
    settings, cfg, arch, params, x, y = _transcoder_case(architecture, rng)
    inputs = TrainInputs({"l1": jnp.float32(0.6)}, jnp.zeros(cfg.d_sae, bool))

    def loss(p):
        out = arch.train_forward(cfg, TrainContext(settings), p, {}, x, y, inputs)
        return out.loss, out

    (total, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    X, Y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    B = X.shape[0]
    h = X @ p["W_enc"] + p["b_enc"]
    f = np.maximum(h, 0)
    out_np = f @ p["W_dec"] + p["b_dec"] + (X @ p["W_skip"].T if "W_skip" in p else 0)
    e = out_np - Y
    n = np.linalg.norm(p["W_dec"], axis=1)
    mse = np.mean(np.sum(e**2, -1))
    l1 = 0.6 * np.mean(np.sum(f * n, -1))
    assert_close(out.losses["mse_loss"], mse, what="mse")
    assert_close(out.losses["l1_loss"], l1, what="l1")
    assert_close(total, mse + l1)
    g_out = 2 * e / B  # [B, d_out]
    expected = {
        "W_dec": f.T @ g_out + 0.6 / B * f.sum(0)[:, None] * p["W_dec"] / n[:, None],
        "b_dec": g_out.sum(0),
    }
    df = g_out @ p["W_dec"].T + 0.6 / B * n
    dh = df * (h > 0)
    expected["W_enc"] = X.T @ dh
    expected["b_enc"] = dh.sum(0)
    if "W_skip" in p:
        expected["W_skip"] = g_out.T @ X
    assert set(expected) == set(grads)
    for name, value in expected.items():
        assert_close(grads[name], value, atol=1e-5, rtol=1e-4, what=f"d/d{name}")


def test_jumprelu_transcoder_uses_the_jumprelu_estimators(rng) -> None:
    """A JumpReLU transcoder's threshold gradient is the rectangle-kernel STE, in closed form."""
    settings = SAESettings(
        architecture="jumprelu_transcoder",
        d_in=6,
        d_out=5,
        d_sae=30,
        jumprelu_bandwidth=0.5,
        l0_coefficient=0.7,
    )
    cfg = settings.sae_config()
    arch = jsae.get_architecture(cfg.architecture)
    params = {
        name: jnp.asarray(rng.normal(0, 0.4, shape), jnp.float32)
        for name, shape in arch.param_shapes(cfg).items()
    }
    params["threshold"] = jnp.asarray(rng.uniform(0.05, 0.5, 30), jnp.float32)
    x = jnp.asarray(rng.normal(size=(12, 6)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(12, 5)), jnp.float32)
    inputs = TrainInputs({"l0": jnp.float32(0.7)}, jnp.zeros(30, bool))

    def loss(p):
        return arch.train_forward(cfg, TrainContext(settings), p, {}, x, y, inputs).loss

    grad = jax.jit(jax.grad(loss))(params)["threshold"]
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    X, Y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    z = X @ p["W_enc"] + p["b_enc"]
    t, eps, B = p["threshold"], 0.5, X.shape[0]
    f = z * (z > t)
    e = f @ p["W_dec"] + p["b_dec"] - Y
    g_f = (2 * e / B) @ p["W_dec"].T  # dL/df
    window = (np.abs((z - t) / eps) < 0.5).astype(np.float64)
    expected = np.sum(-(t / eps) * window * g_f, 0) + np.sum(-(1 / eps) * window * 0.7 / B, 0)
    assert np.any(window), "the case must put pre-activations inside the kernel window"
    assert_close(grad, expected, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------- whole runs

TRAINER_CASES = ["standard", "jumprelu", "topk", "batchtopk", "gated"]
ACTIVE_PAIRS = "standard (active pairs)"  # the standard run on its active-pair loss


@pytest.mark.parametrize("case", [*TRAINER_CASES, ACTIVE_PAIRS])
def test_training_run_matches_saelens_trainer(
    trainer_fixtures: Path, case: str, monkeypatch
) -> None:
    if case == ACTIVE_PAIRS:
        monkeypatch.setattr(relu_pairs, "CAPACITY_FRACTION", 1.0)  # room for every positive
        case, sparse = "standard", True
    else:
        sparse = False
    d = trainer_fixtures / case
    config = json.loads((d / "case.json").read_text())
    config.update(log_to_wandb=False, checkpoint_path=None, output_path=None, progress_bar=False)
    if sparse:
        config["use_sparse_activations"] = True
    tc = jsae.TrainConfig.from_dict(config)
    cfg = tc.sae.sae_config()
    init = load_file(d / "params.safetensors")
    if cfg.architecture == "batchtopk":
        init["topk_threshold"] = np.float32(0.0)
    batches = load_file(d / "batches.safetensors")
    batches = [batches[f"b{i}"] for i in range(len(batches))]
    trainer = jsae.Trainer(tc, batches, init=jsae.SAE.from_params(cfg, init))
    trainer.fit()
    final = load_file(d / "final.safetensors")
    got = trainer.sae.params
    for name, value in got.items():
        expected = final[name]
        if (
            name == "threshold"
        ):  # SAELens projects θ >= 0 before each forward, jsae after each update
            expected = np.maximum(expected, 0)
        assert_close(value, expected, atol=2e-5, rtol=1e-4, what=f"{case}: {name}")
        if name != "topk_threshold":
            assert not np.allclose(value, init[name]), f"{case}: {name} did not train"
    assert_close(trainer.state.fire_counts, final["act_freq_scores"], what="firing counts")
    assert_close(
        trainer.state.since_fired, final["n_forward_passes_since_fired"], what="since fired"
    )


# --------------------------------------------------------------------------------- schedules


def test_learning_rate_schedules_match_torch(schedule_fixtures: dict) -> None:
    for row in schedule_fixtures["lr"]:
        settings = TrainingSettings(**row["settings"])
        steps = jnp.arange(len(row["lrs"]))
        ours = np.asarray(learning_rate(settings, steps))
        assert_close(ours, row["lrs"], atol=1e-9, rtol=1e-5, what=str(row["settings"]))


def test_coefficient_warm_up_matches_saelens(schedule_fixtures: dict) -> None:
    for row in schedule_fixtures["coefficients"]:
        ours = [float(coefficient(row["value"], row["warm_up_steps"], t)) for t in range(12)]
        assert_close(ours, row["values"], atol=1e-7, what=f"warm-up {row['warm_up_steps']}")


def test_lr_end_defaults_to_a_tenth_of_lr() -> None:
    settings = TrainingSettings(
        lr=4e-4, lr_scheduler_name="cosineannealing", training_tokens=100, train_batch_size_tokens=1
    )
    assert settings.lr_end == pytest.approx(4e-5)
    assert float(learning_rate(settings, 99)) == pytest.approx(4e-5, rel=1e-2)  # cosine floor
