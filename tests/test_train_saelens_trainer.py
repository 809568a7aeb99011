"""Whole training runs against SAELens 6.54's SAETrainer, and schedules against torch's schedulers.

SAELens trains from fixed parameters over fixed batches with warm-ups, a cosine (or restarts)
schedule with a final decay, Adam with non-default betas, gradient clipping, and dead-latent and
sparsity windows of a few steps (so AuxK, the pre-activation loss and the window resets all
act). jsae's Trainer, started from the same parameters on the same batches, must end with the
same parameters and the same firing statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, run_reference
from safetensors.numpy import load_file

import jsae
from jsae.training.config import TrainingSettings
from jsae.training.schedules import coefficient, learning_rate

TRAINER_CASES = ["standard", "jumprelu", "topk", "batchtopk", "gated"]


@pytest.fixture(scope="module")
def trainer_fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("saelens_trainer") / "runs"
    run_reference("saelens_training.py", "trainer", out)
    return out


@pytest.mark.parametrize("case", TRAINER_CASES)
def test_training_run_matches_saelens_trainer(trainer_fixtures: Path, case: str) -> None:
    d = trainer_fixtures / case
    config = json.loads((d / "case.json").read_text())
    config.update(log_to_wandb=False, checkpoint_path=None, output_path=None, progress_bar=False)
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
        if name == "threshold":  # SAELens projects θ >= 0 before each forward, jsae after each update
            expected = np.maximum(expected, 0)
        assert_close(value, expected, atol=2e-5, rtol=1e-4, what=f"{case}: {name}")
        if name != "topk_threshold":
            assert not np.allclose(value, init[name]), f"{case}: {name} did not train"
    assert_close(trainer.state.fire_counts, final["act_freq_scores"], what="firing counts")
    assert_close(
        trainer.state.since_fired, final["n_forward_passes_since_fired"], what="since fired"
    )


# --------------------------------------------------------------------------------- schedules


@pytest.fixture(scope="module")
def schedule_fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("schedules") / "schedules.json"
    run_reference("saelens_training.py", "schedules", out)
    return json.loads(out.read_text())


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
    settings = TrainingSettings(lr=4e-4, lr_scheduler_name="cosineannealing", training_tokens=100,
                                train_batch_size_tokens=1)
    assert settings.lr_end == pytest.approx(4e-5)
    assert float(learning_rate(settings, 99)) == pytest.approx(4e-5, rel=1e-2)  # cosine floor
