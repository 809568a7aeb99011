"""Bad input stops training with a clear error and loses nothing.

NaN/Inf in a batch: the run stops with an error naming the step, the state is the one before
that step, the last good checkpoint stays and is resumable, and no output is written. A source
whose width disagrees with d_in is refused before any step. Invalid configs are refused with
the valid choices listed (tests/test_train_config.py).
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jsae


def _config(tmp: Path, **extra) -> dict:
    return {
        "architecture": "standard",
        "d_in": 8,
        "d_sae": 16,
        "l1_coefficient": 0.1,
        "train_batch_size_tokens": 16,
        "training_tokens": 16 * 12,
        "checkpoint_path": str(tmp / "ckpt"),
        "output_path": str(tmp / "out"),
        "log_to_wandb": False,
        "progress_bar": False,
        **extra,
    }


def _batches(n: int, bad: int | None = None, value: float = np.nan) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = [rng.normal(size=(16, 8)).astype(np.float32) for _ in range(n)]
    if bad is not None:
        out[bad][3, 5] = value
    return out


def test_non_finite_batch_stops_the_run_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    trainer = jsae.Trainer(_config(tmp_path, checkpoint_every_steps=3), _batches(12, 7))
    with pytest.raises(
        jsae.NonFiniteError, match=r"step 7: the activation batch contains NaN or Inf.*step 6"
    ):
        trainer.fit()
    assert not (tmp_path / "out").exists(), "no output from a failed run"
    assert trainer.checkpointer.steps() == [3, 6]
    assert trainer.steps_done == 7
    assert all(np.isfinite(np.asarray(v)).all() for v in trainer.sae.params.values())
    # the kept checkpoint resumes; training continues from step 6 on clean data
    resumed = jsae.Trainer(
        _config(tmp_path, resume_from_checkpoint=str(tmp_path / "ckpt")), _batches(12)
    )
    assert resumed.steps_done == 6
    resumed.fit()
    assert (tmp_path / "out" / "sae_weights.safetensors").exists()


def test_state_is_untouched_by_a_non_finite_step(tmp_path: Path) -> None:
    trainer = jsae.Trainer(_config(tmp_path, checkpoint_path=None, output_path=None), _batches(12))
    trainer.step()
    before = {k: np.asarray(v) for k, v in trainer.sae.params.items()}
    bad = _batches(1, 0, np.inf)[0]
    metrics = trainer.step(bad)
    assert not bool(metrics["finite"])
    with pytest.raises(jsae.NonFiniteError, match="step 1"):
        trainer.step()
    for name, value in trainer.sae.params.items():
        assert np.array_equal(np.asarray(value), before[name]), name


def test_non_finite_gradients_of_a_finite_loss_are_not_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Lp penalty with p < 1 whose power keeps its infinite derivative at 0 (as jsae's did
    before `abs_power`): the loss is finite, W_dec's gradient is NaN. The step is selected away
    and the run stops naming it, instead of writing NaN into the weights unnoticed."""
    from jsae.architectures import base

    monkeypatch.setattr(base, "abs_power", lambda v, p: jnp.abs(v) ** p)
    config = _config(tmp_path, checkpoint_path=None, output_path=None, lp_norm=0.5)
    trainer = jsae.Trainer(config, _batches(12))
    before = {k: np.asarray(v) for k, v in trainer.sae.params.items()}
    metrics = trainer.step()
    assert np.isfinite(float(metrics["losses/overall_loss"])) and not bool(metrics["finite"])
    with pytest.raises(jsae.NonFiniteError, match="step 0: the loss is finite but its gradients"):
        trainer.step()
    for name, value in trainer.sae.params.items():
        assert np.array_equal(np.asarray(value), before[name]), name


def test_diverged_loss_is_reported_as_such(tmp_path: Path) -> None:
    cfg = jsae.TrainConfig.from_dict(_config(tmp_path, checkpoint_path=None, output_path=None))
    sae_cfg = cfg.sae.sae_config()
    params = dict(jsae.SAE.init(sae_cfg, 0).params)
    params["W_enc"] = params["W_enc"] * 1e30  # pre-activations overflow
    trainer = jsae.Trainer(cfg, _batches(12), init=jsae.SAE.from_params(sae_cfg, params))
    with pytest.raises(jsae.NonFiniteError, match="step 0: the loss became NaN or Inf"):
        trainer.fit()


def test_a_finite_batch_that_overflows_the_compute_dtype_is_not_called_nan(tmp_path: Path) -> None:
    """Values beyond float16's 65504 are finite data that mixed precision cannot hold: the error
    says so and names the fix, instead of blaming the batch or the learning rate."""
    config = _config(tmp_path, checkpoint_path=None, output_path=None, compute_dtype="float16")
    batches = [x * 1e5 for x in _batches(12)]
    message = r"step 0: the activation batch is finite but overflows float16 .*65504.*bfloat16"
    with pytest.raises(jsae.NonFiniteError, match=message):
        jsae.train(config, batches)


@pytest.mark.parametrize(
    "path",
    [
        {"architecture": "standard"},
        {
            "architecture": "batchtopk",
            "k": 2,
            "use_sparse_activations": True,
            "aux_loss_coefficient": 0,
        },
    ],
)
def test_an_all_zero_row_under_constant_norm_rescale_is_named(tmp_path: Path, path: dict) -> None:
    """Its normalisation divides by the row's zero norm (SAELens's too): the step is refused on
    every path, naming that cause (the sparse paths used to mask the NaN row and train on)."""
    batches = _batches(12)
    batches[1][3] = 0
    config = _config(tmp_path, checkpoint_path=None, output_path=None,
                     normalize_activations="constant_norm_rescale", **path)  # fmt: skip
    if path["architecture"] != "standard":
        del config["l1_coefficient"]
    with pytest.raises(jsae.NonFiniteError, match=r"step 1: .*all-zero row, which constant_norm"):
        jsae.train(config, batches)


def test_a_data_axis_of_every_device_must_divide_the_batch(tmp_path: Path) -> None:
    """mesh {data: -1} takes all 8 test devices: a batch of 12 cannot be split over them, which
    is refused before training, not left to a sharding error at the first step."""
    config = _config(
        tmp_path, mesh={"data": -1}, train_batch_size_tokens=12, training_tokens=48,
        checkpoint_path=None, output_path=None,
    )  # fmt: skip
    message = "train_batch_size_tokens=12 cannot be split over the mesh's data axis of 8 devices"
    with pytest.raises(jsae.ConfigError, match=message):
        jsae.Trainer(config, [])


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_batches_for_the_scale_estimate_stop_before_training(
    tmp_path: Path, value: float
) -> None:
    """expected_average_only_in estimates its scale first; a NaN there would silently scale
    every batch to NaN, so it stops the run, naming the estimate."""
    config = _config(tmp_path, normalize_activations="expected_average_only_in")
    trainer = jsae.Trainer(config, _batches(12, 1, value))
    with pytest.raises(jsae.NonFiniteError, match="estimate the activation scale"):
        trainer.fit()
    assert trainer.steps_done == 0 and trainer.scale is None
    assert not (tmp_path / "out").exists()
    given = jsae.Trainer(_config(tmp_path / "b", normalize_activations="expected_average_only_in"))
    with pytest.raises(jsae.NonFiniteError, match="estimate the activation scale"):
        given.step(_batches(1, 0, value)[0])


def test_source_of_the_wrong_width_is_refused_before_training(tmp_path: Path) -> None:
    wrong = [np.zeros((16, 12), np.float32)] * 3
    trainer = jsae.Trainer(_config(tmp_path, checkpoint_every_steps=1), wrong)
    with pytest.raises(jsae.ShapeError, match=r"shape \(16, 12\) but the SAE has d_in=8"):
        trainer.fit()
    assert trainer.steps_done == 0
    assert trainer.checkpointer.steps() == []
    assert not (tmp_path / "out").exists()


def test_bad_batches_later_in_the_stream_name_the_step(tmp_path: Path) -> None:
    batches = _batches(5)
    batches[3] = np.zeros((16, 9), np.float32)
    trainer = jsae.Trainer(_config(tmp_path, checkpoint_path=None), batches)
    with pytest.raises(jsae.ShapeError, match="step 3"):
        trainer.fit()
    ints = [np.zeros((16, 8), np.int32)]
    with pytest.raises(jsae.ShapeError, match="floating point"):
        jsae.Trainer(_config(tmp_path, checkpoint_path=None), ints).fit()
    positions = [np.zeros((4, 4, 8), np.float32)]  # [batch, positions, d_in] from a model
    with pytest.raises(jsae.ShapeError, match=r"\(4, 4, 8\).*x\.reshape\(-1, 8\)"):
        jsae.Trainer(_config(tmp_path, checkpoint_path=None), positions).fit()


def test_an_error_raised_by_the_source_says_at_which_step(tmp_path: Path) -> None:
    """The caller's own source failing (a lost file, a dropped connection): its error goes up
    unchanged, with a note naming the step and the checkpoint to resume from."""

    def failing():
        yield from _batches(5)
        raise OSError("disk went away")

    trainer = jsae.Trainer(_config(tmp_path, checkpoint_every_steps=2), failing())
    with pytest.raises(OSError, match="disk went away") as caught:
        trainer.fit()
    assert caught.value.__notes__ == [
        f"jsae: raised by the activation source at step 5; the last checkpoint is step 4 in "
        f"{tmp_path / 'ckpt'}."
    ]


def test_transcoder_source_must_yield_pairs(tmp_path: Path) -> None:
    config = _config(tmp_path, architecture="transcoder", d_out=5, checkpoint_path=None)
    with pytest.raises(jsae.ShapeError, match=r"\(x, y\) pairs"):
        jsae.Trainer(config, _batches(3)).fit()
    pairs = [(x, np.zeros((16, 6), np.float32)) for x in _batches(3)]
    with pytest.raises(jsae.ShapeError, match="d_out=5"):
        jsae.Trainer(config, pairs).fit()


def test_existing_output_is_refused_before_training(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        jsae.Trainer(_config(tmp_path), _batches(12))


def test_a_source_that_ends_early_saves_what_was_trained(tmp_path: Path) -> None:
    trainer = jsae.Trainer(_config(tmp_path, checkpoint_path=None), _batches(5))
    with pytest.warns(UserWarning, match="ended after 5 steps"):
        sae = trainer.fit()
    assert trainer.steps_done == 5
    assert jsae.load(tmp_path / "out").cfg.d_sae == sae.cfg.d_sae == 16


def test_a_fresh_run_refuses_another_runs_checkpoints(tmp_path: Path) -> None:
    """Writing among another run's checkpoints would fail when a step exists (after the work)
    or make a later resume continue the wrong run; nothing of the old run is touched."""
    config = _config(tmp_path, checkpoint_every_steps=4, output_path=None)
    first = jsae.Trainer(config, _batches(12))
    first.fit()
    kept = sorted(p.name for p in (tmp_path / "ckpt").rglob("*"))
    with pytest.raises(jsae.ConfigError, match=r"already holds checkpoints.*steps \[4, 8, 12\]"):
        jsae.Trainer(_config(tmp_path, output_path=None), _batches(12))
    assert sorted(p.name for p in (tmp_path / "ckpt").rglob("*")) == kept
    resumed = jsae.Trainer(
        _config(tmp_path, output_path=None, resume_from_checkpoint=str(tmp_path / "ckpt")),
        _batches(12),
    )
    assert resumed.steps_done == 12
    assert resumed.save_checkpoint() == 12  # already there: saving again is a no-op


def _transcoder_config(tmp: Path, **extra) -> dict:
    return _config(tmp, architecture="transcoder", d_out=5, checkpoint_path=None, **extra)


def test_transcoder_pairs_with_unequal_rows_are_refused(tmp_path: Path) -> None:
    """Re-cut batches concatenate inputs and targets separately: one pair of unequal lengths
    would shift every later target against its input."""
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=(20, 8)), rng.normal(size=(20, 5))) for _ in range(12)]
    pairs = [(x.astype(np.float32), y.astype(np.float32)) for x, y in pairs]
    pairs[1] = (pairs[1][0], pairs[1][1][:19])
    trainer = jsae.Trainer(_transcoder_config(tmp_path, output_path=None), pairs)
    with pytest.raises(jsae.ShapeError, match=r"step 1: item 2 .*pairs 20 input rows with 19"):
        trainer.fit()
    trainer = jsae.Trainer(_transcoder_config(tmp_path, output_path=None), pairs)
    with pytest.raises(jsae.ConfigError, match=r"needs its target batch too.*\[16, 5\]"):
        trainer.step(pairs[0][0][:16])


def test_a_wrong_width_in_a_recut_item_names_the_step(tmp_path: Path) -> None:
    items = [np.ones((20, 8), np.float32) for _ in range(12)]
    items[3] = np.ones((20, 9), np.float32)  # 20-row items are re-cut into 16-row batches
    trainer = jsae.Trainer(_config(tmp_path, checkpoint_path=None), items)
    with pytest.raises(
        jsae.ShapeError, match=r"step 3: .*item 4 \(counting from 1\) has input shape \(20, 9\)"
    ):
        trainer.fit()
    items[3] = np.ones((20, 8), np.int32)
    trainer = jsae.Trainer(_config(tmp_path, checkpoint_path=None), items)
    with pytest.raises(jsae.ShapeError, match="must be floating point, got int32"):
        trainer.fit()
    assert not (tmp_path / "out").exists()


def test_an_initial_sae_must_fit_and_takes_the_configs_dtype(tmp_path: Path) -> None:
    config = jsae.TrainConfig.from_dict(_transcoder_config(tmp_path, output_path=None))
    wrong = jsae.SAE.init(config.sae.sae_config().replace(d_out=4), 0)
    with pytest.raises(jsae.ConfigError, match=r"W_dec has shape \(16, 4\).*takes \(16, 5\)"):
        jsae.Trainer(config, [], init=wrong)
    bf16 = jsae.SAE.init(config.sae.sae_config(), 0).astype("bfloat16")
    trainer = jsae.Trainer(config, [], init=bf16)
    assert {str(v.dtype) for v in trainer.state.params.values()} == {"float32"}
    assert trainer.state.opt_state[1].mu["W_enc"].dtype == np.float32


def test_exhausted_and_too_short_sources_say_so(tmp_path: Path) -> None:
    trainer = jsae.Trainer(_config(tmp_path, output_path=None), _batches(3))
    for _ in range(3):
        trainer.step()
    with pytest.raises(StopIteration, match="exhausted after 3 steps"):
        trainer.step()
    trainer.save_checkpoint()
    with pytest.raises(jsae.ConfigError, match="ended after 2 items while skipping the 3"):
        jsae.Trainer(
            _config(tmp_path, output_path=None, resume_from_checkpoint=str(tmp_path / "ckpt")),
            _batches(2),
        )


def test_a_failed_steps_metrics_row_stays_strict_json(tmp_path: Path) -> None:
    import json

    config = _config(tmp_path, wandb_log_frequency=1)
    trainer = jsae.Trainer(config, _batches(12, 4))
    with pytest.raises(jsae.NonFiniteError, match="step 4"):
        trainer.fit()
    rows = (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()
    parsed = [json.loads(r, parse_constant=lambda c: pytest.fail(f"{c} in JSONL")) for r in rows]
    assert parsed[-1]["step"] == 4 and parsed[-1]["losses/overall_loss"] is None


def test_an_initial_jumprelu_sae_starts_with_non_negative_thresholds(tmp_path: Path) -> None:
    """Every update projects the threshold to >= 0 (SAELens projects before each forward
    pass); a starting SAE is projected the same way, so its first step has a valid gate."""
    config = jsae.TrainConfig.from_dict(
        {**_config(tmp_path, architecture="jumprelu", checkpoint_path=None), "l1_coefficient": 1.0}
    )  # l1_coefficient at its default: accepted for any architecture
    sae = jsae.SAE.init(config.sae.sae_config(), 0)
    threshold = np.linspace(-0.5, 0.5, 16).astype(np.float32)
    start = jsae.SAE.from_params(sae.cfg, {**sae.params, "threshold": threshold})
    trainer = jsae.Trainer(config, [], init=start)
    assert np.array_equal(np.asarray(trainer.state.params["threshold"]), np.maximum(threshold, 0))


def test_a_generator_function_instead_of_its_generator_says_to_call_it(tmp_path: Path) -> None:
    def batches():
        yield from _batches(12)

    with pytest.raises(jsae.ShapeError, match=r"got function \(a function: pass what it returns"):
        jsae.Trainer(_config(tmp_path), batches)
    with pytest.raises(jsae.ShapeError, match=r"must be an iterable of .* got int"):
        jsae.Trainer(_config(tmp_path), 3)


def test_paths_the_run_could_not_use_are_refused_before_training(tmp_path: Path) -> None:
    """Found before the first step, not after the last: a checkpoint_path holding a saved SAE
    (the run would write its config and metrics over that SAE's), a metrics_path inside the
    output (which must not exist until the end), an output under a file."""
    saved = tmp_path / "saved"
    jsae.train(_config(tmp_path, checkpoint_path=None, output_path=str(saved)), _batches(12))
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    with pytest.raises(jsae.ConfigError, match=r"holds a saved SAE .*from_pretrained_path"):
        jsae.Trainer(_config(tmp_path, checkpoint_path=str(saved)), _batches(12))
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before, "the SAE is untouched"
    inside = str(tmp_path / "out" / "metrics.jsonl")
    with pytest.raises(jsae.ConfigError, match=r"metrics_path .* lies inside output_path"):
        jsae.Trainer(_config(tmp_path, metrics_path=inside), _batches(12))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(FileExistsError, match=r"lies under .*a_file, which is a file"):
        jsae.Trainer(_config(tmp_path, output_path=str(tmp_path / "a_file" / "out")), [])
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("layout", ["same", "output_inside", "checkpoints_inside"])
def test_output_and_checkpoint_paths_that_overlap_are_refused_up_front(
    tmp_path: Path, layout: str
) -> None:
    """Writing the output would replace (or land among) the checkpoints: refused before the
    first step, even with overwrite_output."""
    ckpt, out = {
        "same": (tmp_path / "run", tmp_path / "run"),
        "output_inside": (tmp_path / "run", tmp_path / "run" / "sae"),
        "checkpoints_inside": (tmp_path / "run" / "ckpt", tmp_path / "run"),
    }[layout]
    config = _config(tmp_path, checkpoint_path=str(ckpt), output_path=str(out))
    with pytest.raises(jsae.ConfigError, match="overlap"):
        jsae.Trainer({**config, "overwrite_output": True}, _batches(12))


def test_an_output_path_that_is_a_file_is_refused_up_front(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("not a directory")
    with pytest.raises(FileExistsError, match="is a file"):
        jsae.Trainer({**_config(tmp_path), "overwrite_output": True}, _batches(12))


def test_a_source_used_up_by_the_scale_estimate_is_an_error_not_an_untrained_sae(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, normalize_activations="expected_average_only_in")
    with pytest.raises(jsae.ConfigError, match="ended after 12 of the n_batches_for_norm_esti"):
        jsae.Trainer(config, _batches(12)).fit()
    assert not (tmp_path / "out").exists()
    with pytest.raises(jsae.ConfigError, match="ended before one batch"):
        jsae.Trainer(_config(tmp_path), [np.zeros((0, 8), np.float32)] * 4).fit()
    assert not (tmp_path / "out").exists()


def test_npy_files_of_different_widths_are_refused_before_training(tmp_path: Path) -> None:
    folder = tmp_path / "acts"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((64, 8), np.float32))
    np.save(folder / "b.npy", np.zeros((64, 9), np.float32))
    with pytest.raises(jsae.ShapeError, match=r"b\.npy is 9 wide but a\.npy is 8"):
        jsae.training.NpyDirectorySource(folder, batch_size=16)


def test_evaluator_results_are_checked_and_a_finished_trainer_says_so(tmp_path: Path) -> None:
    config = _config(tmp_path, checkpoint_path=None, output_path=None, wandb_log_frequency=1,
                     eval_every_n_wandb_logs=2)  # fmt: skip
    trainer = jsae.Trainer(config, _batches(12), evaluator=lambda sae, step: None)
    trainer.fit()  # None: nothing to log
    with pytest.raises(RuntimeError, match="has finished its run \\(12 steps\\)"):
        trainer.fit()
    with pytest.raises(TypeError, match="must return a dict of metrics \\(or None\\), got int"):
        jsae.Trainer(config, _batches(12), evaluator=lambda sae, step: 3).fit()


def test_one_array_of_rows_is_the_whole_dataset(tmp_path: Path) -> None:
    """An [N, d_in] array trains exactly as the same rows given as batches."""
    config = _config(tmp_path, checkpoint_path=None, output_path=None)
    batches = _batches(12)
    as_batches = jsae.Trainer(config, batches).fit()
    as_array = jsae.Trainer(config, np.concatenate(batches)).fit()
    for name, value in as_batches.params.items():
        assert np.array_equal(np.asarray(as_array.params[name]), np.asarray(value)), name
    with pytest.raises(jsae.ShapeError, match="one array must be \\[N, d_in\\] rows"):
        jsae.Trainer(config, np.zeros((2, 16, 8), np.float32))


def test_a_batch_passed_to_step_names_the_row_count_it_needs(tmp_path: Path) -> None:
    trainer = jsae.Trainer(_config(tmp_path, checkpoint_path=None), [])
    with pytest.raises(jsae.ShapeError, match="takes \\[16, 8\\] batches; a batch passed to Tr"):
        trainer.step(np.zeros((10, 8), np.float32))
    # With an estimated scale, a refused batch leaves it unset: the next batch sets it.
    config = _config(
        tmp_path, checkpoint_path=None, normalize_activations="expected_average_only_in"
    )
    trainer = jsae.Trainer(config, [])
    with pytest.raises(jsae.ShapeError, match="takes \\[16, 8\\] batches"):
        trainer.step(10 * _batches(1)[0][:10])
    assert trainer.scale is None and trainer.steps_done == 0
    trainer.step(_batches(1)[0])
    assert trainer.scale == pytest.approx(
        np.sqrt(8) / np.linalg.norm(_batches(1)[0], axis=1).mean()
    )


def test_from_pretrained_path_starts_from_a_saved_sae(tmp_path: Path) -> None:
    """SAELens's `from_pretrained_path`: the run starts from the SAE saved there, as
    `Trainer(..., init=jsae.load(path))` does; giving both is refused."""
    saved = jsae.train(_config(tmp_path, checkpoint_path=None), _batches(12))
    config = _config(tmp_path, checkpoint_path=None, output_path=None)
    by_path = jsae.Trainer({**config, "from_pretrained_path": str(tmp_path / "out")}, [])
    by_init = jsae.Trainer(config, [], init=jsae.load(tmp_path / "out"))
    fresh = jsae.Trainer(config, [])
    for name, value in saved.params.items():
        assert np.array_equal(np.asarray(by_path.state.params[name]), np.asarray(value)), name
        assert np.array_equal(np.asarray(by_init.state.params[name]), np.asarray(value)), name
    assert not np.array_equal(np.asarray(fresh.state.params["W_dec"]), saved.params["W_dec"])
    with pytest.raises(jsae.ConfigError, match="both init= and from_pretrained_path"):
        jsae.Trainer({**config, "from_pretrained_path": str(tmp_path / "out")}, [], init=saved)


def test_python_lists_and_pairs_for_an_sae_are_told_apart(tmp_path: Path) -> None:
    config = _config(tmp_path, checkpoint_path=None, output_path=None)
    with pytest.raises(jsae.ShapeError, match=r"a Python list of 16 items; make each batch an arr"):
        jsae.Trainer(config, [[[0.0] * 8] * 16]).fit()
    pair = (np.zeros((16, 8), np.float32), np.zeros((16, 8), np.float32))
    with pytest.raises(jsae.ShapeError, match=r"a 2-tuple \(pairs are for transcoders\)"):
        jsae.Trainer(config, [pair]).fit()
