"""Checkpoints and resume: a run killed with SIGKILL and resumed ends exactly where an
uninterrupted run does (parameters, Adam state, schedules, counters, firing statistics, the
activation scale and the source's position are all restored)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

import jsae
from jsae.errors import TrainingInterrupted
from jsae.training.checkpoint import Checkpointer

B = 64


def _run_config(tmp: Path, name: str, **extra) -> Path:
    config = {
        "architecture": "topk",
        "d_in": 16,
        "d_sae": 64,
        "k": 3,
        "aux_loss_coefficient": 0.5,
        "lr": 3e-3,
        "lr_scheduler_name": "cosineannealing",
        "lr_warm_up_steps": 20,
        "lr_decay_steps": 50,
        "train_batch_size_tokens": B,
        "training_tokens": B * 500,
        "dead_feature_window": 20,
        "feature_sampling_window": 64,
        "normalize_activations": "expected_average_only_in",
        "n_batches_for_norm_estimate": 5,
        "synthetic_structure": "correlated",
        "checkpoint_path": str(tmp / f"{name}-ckpt"),
        "output_path": str(tmp / f"{name}-out"),
        "log_to_wandb": False,
        "progress_bar": False,
        **extra,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _jsae_train(*args: str) -> subprocess.Popen:
    code = "import sys; from jsae.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )


def _finish(proc: subprocess.Popen, timeout: float = 240) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"jsae train failed ({proc.returncode}):\n{out}\n{err[-3000:]}"


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    reference = _jsae_train(
        "--config", str(_run_config(tmp_path, "ref", checkpoint_every_steps=100))
    )
    killed_cfg = _run_config(tmp_path, "killed", checkpoint_every_steps=100)
    killed = _jsae_train("--config", str(killed_cfg), "--auto-resume")  # nothing yet: starts
    state_dir = tmp_path / "killed-ckpt" / "state"

    def committed() -> list[int]:  # orbax renames a checkpoint to its bare step when complete
        if not state_dir.is_dir():
            return []
        return sorted(int(p.name) for p in state_dir.iterdir() if p.name.isdigit())

    deadline = time.time() + 240
    while not committed():
        assert killed.poll() is None, f"run ended before a checkpoint: {killed.communicate()}"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed-out").exists(), "the run finished before it could be killed"
    assert committed()[-1] < 500

    _finish(_jsae_train("--config", str(killed_cfg), "--resume"))
    _finish(reference)
    got = load_file(tmp_path / "killed-out" / "sae_weights.safetensors")
    want = load_file(tmp_path / "ref-out" / "sae_weights.safetensors")
    assert set(got) == set(want)
    for name in want:
        assert np.array_equal(got[name], want[name]), f"{name} differs after resume"
    assert np.array_equal(
        load_file(tmp_path / "killed-out" / "sparsity.safetensors")["sparsity"],
        load_file(tmp_path / "ref-out" / "sparsity.safetensors")["sparsity"],
    )
    rows = (tmp_path / "killed-out" / "metrics.jsonl").read_text().splitlines()
    logged_steps = [yaml.safe_load(r)["step"] for r in rows]
    assert logged_steps == sorted(logged_steps) and len(set(logged_steps)) == len(logged_steps)


def _stepped(trainer: jsae.Trainer, steps: int, *, every: int | None = None) -> None:
    """Take `steps` steps, checkpointing every `every` steps (or once, at the end)."""
    for _ in range(steps):
        trainer.step()
        if every and trainer.steps_done % every == 0:
            trainer.save_checkpoint()
    if not every:
        trainer.save_checkpoint()


def _list_config(tmp: Path, **extra) -> dict:
    return {
        "architecture": "jumprelu",
        "d_in": 8,
        "d_sae": 32,
        "l0_coefficient": 0.3,
        "l0_warm_up_steps": 7,
        "jumprelu_bandwidth": 0.3,
        "lr": 5e-3,
        "lr_warm_up_steps": 3,
        "train_batch_size_tokens": 32,
        "training_tokens": 32 * 20,
        "dead_feature_window": 3,
        "feature_sampling_window": 6,
        "checkpoint_path": str(tmp / "ckpt"),
        "output_path": None,
        "log_to_wandb": False,
        "progress_bar": False,
        **extra,
    }


def test_resume_with_a_plain_list_and_uneven_batches(tmp_path: Path) -> None:
    """A non-resumable source is fast-forwarded; the rows carried over between batches are
    the last item's last rows, taken from it again."""
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(24, 8)).astype(np.float32) for _ in range(30)]  # 24 rows != 32

    uninterrupted = jsae.Trainer(_list_config(tmp_path, checkpoint_path=None), chunks)
    uninterrupted.fit()

    first = jsae.Trainer(_list_config(tmp_path), chunks)
    _stepped(first, 10)
    info, arrays = first.feeder.position()
    assert info["tail_rows"] == (-10 * 32) % 24 and not arrays  # re-read from the source

    resumed = jsae.Trainer(
        _list_config(tmp_path, resume_from_checkpoint=str(tmp_path / "ckpt")), chunks
    )
    assert resumed.steps_done == 10
    resumed.fit()
    for name, value in uninterrupted.sae.params.items():
        assert np.array_equal(np.asarray(resumed.sae.params[name]), np.asarray(value)), name
    assert np.array_equal(
        np.asarray(resumed.state.fire_counts), np.asarray(uninterrupted.state.fire_counts)
    )
    assert np.array_equal(
        np.asarray(resumed.state.opt_state[1].nu["threshold"]),
        np.asarray(uninterrupted.state.opt_state[1].nu["threshold"]),
    )


def test_resume_refuses_different_sae_settings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(20)]
    trainer = jsae.Trainer(_list_config(tmp_path), chunks)
    trainer.step()
    trainer.save_checkpoint()
    changed = _list_config(tmp_path, d_sae=64, resume_from_checkpoint=str(tmp_path / "ckpt"))
    with pytest.raises(jsae.ConfigError, match="d_sae"):
        jsae.Trainer(changed, chunks)
    moved = _list_config(
        tmp_path, metadata={"hook_name": "blocks.1.hook_resid_post"},
        resume_from_checkpoint=str(tmp_path / "ckpt"),
    )  # fmt: skip
    with pytest.raises(jsae.ConfigError, match=r"checkpoint's in \['metadata\.hook_name'\]"):
        jsae.Trainer(moved, chunks)
    with pytest.raises(jsae.ConfigError, match="no checkpoint"):
        jsae.Trainer(_list_config(tmp_path, resume_from_checkpoint=str(tmp_path / "empty")), chunks)


def test_a_transcoder_resumes_with_d_out_spelled_out_or_left_to_d_in(tmp_path: Path) -> None:
    """d_out unset means d_in: spelling it out on resume is the same SAE (it was refused:
    "differ in ['d_out']"), in either direction."""
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=(32, 8)).astype(np.float32),) * 2 for _ in range(4)]
    base = {**_list_config(tmp_path), "architecture": "jumprelu_transcoder"}
    for saved, resumed in ((None, 8), (8, None)):
        ckpt = tmp_path / f"ckpt_{saved}"
        trainer = jsae.Trainer({**base, "d_out": saved, "checkpoint_path": str(ckpt)}, pairs)
        _stepped(trainer, 2)
        assert trainer.final_sae().cfg.to_dict()["d_out"] == 8  # cfg.json: never null
        again = jsae.Trainer({**base, "d_out": resumed, "resume_from_checkpoint": str(ckpt)}, pairs)
        assert again.steps_done == 2
        with pytest.raises(jsae.ConfigError, match=r"differ from the checkpoint's in \['d_out'\]"):
            jsae.Trainer({**base, "d_out": 16, "resume_from_checkpoint": str(ckpt)}, pairs)


def test_resume_may_switch_the_sparse_path(tmp_path: Path) -> None:
    """use_sparse_activations changes only how the same losses are computed."""
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(20)]
    jumprelu_only = ("l0_coefficient", "l0_warm_up_steps", "jumprelu_bandwidth")
    config = {k: v for k, v in _list_config(tmp_path).items() if k not in jumprelu_only}
    config.update(architecture="topk", k=3)
    trainer = jsae.Trainer(dict(config, use_sparse_activations=False), chunks)
    _stepped(trainer, 4)
    resumed = jsae.Trainer(
        dict(config, use_sparse_activations=True, resume_from_checkpoint=str(tmp_path / "ckpt")),
        chunks,
    )
    assert resumed.steps_done == 4


def test_auto_resume_starts_or_continues(tmp_path: Path, capsys) -> None:
    """resume_from_checkpoint='auto' (`jsae train --auto-resume`): the same command serves a
    job's first start and every restart."""
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(20)]
    config = _list_config(tmp_path, resume_from_checkpoint="auto")
    first = jsae.Trainer(config, chunks)
    assert first.steps_done == 0 and "no checkpoint in" in capsys.readouterr().err
    _stepped(first, 6)
    again = jsae.Trainer(config, chunks)
    assert again.steps_done == 6 and "resumed from step 6" in capsys.readouterr().err
    again.fit()
    plain = jsae.Trainer(_list_config(tmp_path, checkpoint_path=None), chunks)
    plain.fit()
    for name, value in plain.sae.params.items():
        assert np.array_equal(np.asarray(again.sae.params[name]), np.asarray(value)), name
    with pytest.raises(jsae.ConfigError, match="'auto' resumes from checkpoint_path, which"):
        jsae.TrainConfig.from_dict(
            _list_config(tmp_path, checkpoint_path=None, resume_from_checkpoint="auto")
        )


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_resumed_cli_run_ends_as_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    """A scheduler's SIGTERM stops `jsae train` after the current step with a checkpoint of that
    step and a one-line message (exit 143, no traceback); --resume then ends bit for bit where a
    run that was never interrupted does. (Ctrl-C takes the same path: the next test.)"""
    reference = _jsae_train(
        "--config", str(_run_config(tmp_path, "ref", checkpoint_every_steps=100))
    )
    runs = (signal.SIGTERM,)
    for sig in runs:  # signalled a little after its first checkpoint
        config = _run_config(tmp_path, sig.name, checkpoint_every_steps=100)
        proc = _jsae_train("--config", str(config))
        state_dir = tmp_path / f"{sig.name}-ckpt" / "state"
        deadline = time.time() + 240
        while not (state_dir.is_dir() and any(p.name.isdigit() for p in state_dir.iterdir())):
            assert proc.poll() is None, f"run ended before a checkpoint: {proc.communicate()}"
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        time.sleep(0.1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + sig, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        last = err.strip().splitlines()[-1]
        match = re.fullmatch(rf"jsae train: training interrupted \({sig.name}\) at step (\d+): "
                             r"checkpointed in (.+); continue with --resume\.", last)  # fmt: skip
        assert match, last
        step = int(match.group(1))
        assert 100 <= step < 500 and (state_dir / str(step)).is_dir()
        assert not (tmp_path / f"{sig.name}-out").exists()
        _finish(_jsae_train("--config", str(config), "--resume"))
    _finish(reference)
    want = load_file(tmp_path / "ref-out" / "sae_weights.safetensors")
    for sig in runs:
        got = load_file(tmp_path / f"{sig.name}-out" / "sae_weights.safetensors")
        for name in want:
            assert np.array_equal(got[name], want[name]), f"{name} differs after {sig.name}"


class _Interrupting:
    """A list of batches that sends this process SIGINT (as Ctrl-C does) while it yields item
    `at`; resumable as a plain list is (fast-forwarded)."""

    def __init__(self, batches: list, at: int):
        self.batches, self.at = batches, at

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i == self.at:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch


def test_ctrl_c_stops_after_the_step_with_its_checkpoint(tmp_path: Path) -> None:
    """SIGINT during fit(): the step whose batch was being read completes, then the run stops
    with a checkpoint of the steps done and `TrainingInterrupted` (a KeyboardInterrupt); the
    handler is removed again, and the resumed run ends where an uninterrupted one does."""
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(20)]
    before = signal.getsignal(signal.SIGINT)
    trainer = jsae.Trainer(_list_config(tmp_path), _Interrupting(chunks, 6))
    with pytest.raises(TrainingInterrupted, match=r"\(SIGINT\) at step 7: checkpointed in .*ckpt"):
        trainer.fit()
    assert signal.getsignal(signal.SIGINT) is before
    assert trainer.checkpointer.steps() == [7] and trainer.steps_done == 7
    resumed = jsae.Trainer(_list_config(tmp_path, resume_from_checkpoint=str(tmp_path / "ckpt")),
                           chunks)  # fmt: skip
    assert resumed.steps_done == 7
    resumed.fit()
    plain = jsae.Trainer(_list_config(tmp_path, checkpoint_path=None), chunks)
    plain.fit()
    for name, value in plain.sae.params.items():
        assert np.array_equal(np.asarray(resumed.sae.params[name]), np.asarray(value)), name
    # no checkpoint option is set, but a run that checkpointed ends with one: a restarted job
    # then finds the finished run (it used to resume at step 7 and refuse the output)
    assert resumed.checkpointer.steps()[-1] == 20


def test_a_restarted_job_finds_its_run_finished_after_an_interrupt(tmp_path: Path) -> None:
    """--auto-resume, interrupted once and run to the end, then restarted again: the saved SAE
    is returned (without a final checkpoint, the newest was the interrupt's, and the restart
    resumed there and refused the existing output_path)."""
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(20)]
    config = _list_config(tmp_path, resume_from_checkpoint="auto", output_path=str(tmp_path / "o"))
    with pytest.raises(TrainingInterrupted):
        jsae.Trainer(config, _Interrupting(chunks, 6)).fit()
    done = jsae.Trainer(config, chunks).fit()
    again = jsae.Trainer(config, chunks)
    assert again.steps_done == 20
    sae = again.fit()
    for name, value in done.params.items():
        assert np.array_equal(np.asarray(sae.params[name]), np.asarray(value)), name


def test_fit_again_after_ctrl_c_goes_on_in_the_same_metrics_file(tmp_path: Path) -> None:
    """A notebook's interrupted fit() called again on the same Trainer: it trains on from the
    interrupt, and the metrics rows of the steps before it stay (they used to be deleted, as if
    a new run began)."""
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(20)]
    config = _list_config(tmp_path, wandb_log_frequency=1, output_path=str(tmp_path / "out"))
    trainer = jsae.Trainer(config, _Interrupting(chunks, 6))
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").open()]
    assert [row["step"] for row in rows if "losses/overall_loss" in row] == list(range(20))
    plain = jsae.Trainer(_list_config(tmp_path, checkpoint_path=None), chunks)
    plain.fit()
    for name, value in plain.sae.params.items():
        assert np.array_equal(np.asarray(trainer.sae.params[name]), np.asarray(value)), name


def test_request_stop_from_another_thread_is_served_once(tmp_path: Path) -> None:
    """`request_stop()` stops a fit() running off the main thread after its step, with a
    checkpoint; the request is then used up, so fit() again trains to the end."""
    import threading

    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(20)]
    trainer = jsae.Trainer(_list_config(tmp_path), chunks)
    outcomes: list[BaseException | int] = []

    def fit_twice() -> None:
        for _ in range(2):
            try:
                trainer.fit()
                outcomes.append(trainer.steps_done)
            except TrainingInterrupted as exc:
                outcomes.append(exc)

    _stepped(trainer, 3, every=100)  # no checkpoint yet
    trainer.request_stop()
    worker = threading.Thread(target=fit_twice)
    worker.start()
    worker.join(timeout=300)
    assert isinstance(outcomes[0], TrainingInterrupted) and "(stop requested) at step 3" in str(
        outcomes[0]
    )
    assert outcomes[1] == 20 and trainer.checkpointer.steps()[0] == 3


def test_fit_after_stepping_to_the_end_writes_the_output(tmp_path: Path) -> None:
    """step() through the whole run, then fit() to save, on a source with no rows left: fit()
    has no step to take and writes the output (it used to refuse the source as empty)."""
    rows = np.random.default_rng(0).normal(size=(32 * 20, 8)).astype(np.float32)
    config = _list_config(tmp_path, checkpoint_path=None, output_path=str(tmp_path / "out"))
    trainer = jsae.Trainer(config, rows)
    while trainer.steps_done < trainer.total_steps:
        trainer.step()
    sae = trainer.fit()
    saved = jsae.load(tmp_path / "out")
    for name, value in sae.params.items():
        assert np.array_equal(np.asarray(saved.params[name]), np.asarray(value)), name


def test_a_checkpoint_after_an_interrupt_inside_a_batch_resumes(tmp_path: Path) -> None:
    """Items smaller than a batch are joined into batches; an interrupt (or an error) from the
    source while one is being joined leaves rows of several items pending. A checkpoint then
    holds them as the last rows of the items read, and the resume finds them there (it used to
    look in the last item alone, and refused)."""
    rng = np.random.default_rng(0)
    items = [rng.normal(size=(12, 8)).astype(np.float32) for _ in range(60)]  # batches of 32

    def interrupted_at(number: int):
        for i, item in enumerate(items):
            if i == number:
                raise KeyboardInterrupt
            yield item

    config = _list_config(tmp_path)
    first = jsae.Trainer(config, interrupted_at(15))
    with pytest.raises(KeyboardInterrupt):
        while True:
            first.step()
    assert first.feeder.position()[0]["tail_rows"] > 12  # rows of two items wait
    first.save_checkpoint()
    first.close()
    resumed = jsae.Trainer(
        _list_config(tmp_path, resume_from_checkpoint=str(tmp_path / "ckpt")), items
    )
    resumed.fit()
    plain = jsae.Trainer(_list_config(tmp_path, checkpoint_path=None), items)
    plain.fit()
    for name, value in plain.sae.params.items():
        assert np.array_equal(np.asarray(resumed.sae.params[name]), np.asarray(value)), name


def test_resume_refuses_another_batch_size_or_a_checkpoint_past_the_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(20)]
    first = jsae.Trainer(_list_config(tmp_path), chunks)
    _stepped(first, 6)
    ckpt = str(tmp_path / "ckpt")
    with pytest.raises(jsae.ConfigError, match=r"train_batch_size_tokens=32 .*this config has 16"):
        jsae.Trainer(_list_config(tmp_path, resume_from_checkpoint=ckpt,
                                  train_batch_size_tokens=16), chunks)  # fmt: skip
    with pytest.raises(jsae.ConfigError, match=r"step 6 \(192 tokens\), past .*=160 \(5 steps\)"):
        jsae.Trainer(_list_config(tmp_path, resume_from_checkpoint=ckpt, training_tokens=160,
                                  lr_warm_up_steps=0, lr_decay_steps=0), chunks)  # fmt: skip
    missing = tmp_path / "no-such-dir"
    with pytest.raises(jsae.ConfigError, match="no such directory"):
        jsae.Trainer(_list_config(tmp_path, resume_from_checkpoint=str(missing)), chunks)
    assert not missing.exists()  # refused before anything was created


def test_auto_resume_of_a_finished_run_returns_its_sae(tmp_path: Path, capsys) -> None:
    """A restarted job whose run had finished (final checkpoint and output written) succeeds
    with the saved SAE instead of failing on the existing output_path."""
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(20)]
    config = _list_config(tmp_path, resume_from_checkpoint="auto", save_final_checkpoint=True,
                          output_path=str(tmp_path / "out"))  # fmt: skip
    done = jsae.Trainer(config, chunks).fit()
    again = jsae.Trainer(config, chunks)
    sae = again.fit()
    assert "this run had already finished" in capsys.readouterr().err
    for name, value in done.params.items():
        assert np.array_equal(np.asarray(sae.params[name]), np.asarray(value)), name
    longer = {**config, "training_tokens": config["training_tokens"] + 64}
    with pytest.raises(FileExistsError, match="already exists"):  # more to train: refused
        jsae.Trainer(longer, chunks)

    # a run that ended because its source did (10 batches of 20), checkpointed at its last step
    short = {**config, "output_path": str(tmp_path / "short"), "checkpoint_every_steps": 5,
             "checkpoint_path": str(tmp_path / "short_ckpt")}  # fmt: skip
    with pytest.warns(UserWarning, match="ended"):
        done = jsae.Trainer(short, chunks[:10]).fit()
    capsys.readouterr()
    sae = jsae.Trainer(short, chunks[:10]).fit()
    assert "this run had already finished (step 10 of 20)" in capsys.readouterr().err
    for name, value in done.params.items():
        assert np.array_equal(np.asarray(sae.params[name]), np.asarray(value)), name
    with pytest.raises(FileExistsError, match="already exists"):  # another length: refused
        jsae.Trainer({**short, "training_tokens": 32 * 30}, chunks[:10])


def test_a_checkpoint_directory_loads_as_the_sae_at_its_newest_step(tmp_path: Path) -> None:
    """`jsae.load(checkpoint_path)` (`jsae.training.load_checkpoint`): the SAE the run would
    have saved had it ended at its newest checkpoint."""
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(20)]
    chunks += chunks[:2]  # the two batches the activation scale uses up
    config = _list_config(tmp_path, normalize_activations="expected_average_only_in",
                          n_batches_for_norm_estimate=2, save_final_checkpoint=True,
                          output_path=str(tmp_path / "out"))  # fmt: skip
    trainer = jsae.Trainer(config, chunks)
    trainer.fit()
    final = jsae.load(tmp_path / "out")
    loaded = jsae.load(tmp_path / "ckpt")
    assert loaded.cfg.architecture == final.cfg.architecture == "jumprelu"
    for name, value in final.params.items():
        assert np.array_equal(np.asarray(loaded.params[name]), np.asarray(value)), name
    assert jsae.training.is_checkpoint_dir(tmp_path / "ckpt")
    with pytest.raises(jsae.ConfigError, match="not a jsae checkpoint directory"):
        jsae.training.load_checkpoint(tmp_path / "out")


def test_a_fine_tune_checkpointed_before_its_first_step_resumes_exactly(tmp_path: Path) -> None:
    """The starting SAE is unfolded by the run's scale when the scale is estimated; a
    checkpoint written before that keeps the unfold to come, so the resumed run still matches."""
    rng = np.random.default_rng(0)
    data = [(5 * rng.normal(0.3, 1.0, (32, 8))).astype(np.float32) for _ in range(20)]
    config = {
        "architecture": "standard", "d_in": 8, "d_sae": 16, "train_batch_size_tokens": 32,
        "training_tokens": 32 * 10, "normalize_activations": "expected_average_only_in",
        "n_batches_for_norm_estimate": 4, "log_to_wandb": False, "progress_bar": False,
        "output_path": None, "checkpoint_path": None,
    }  # fmt: skip
    init = jsae.train(config, data)
    straight = jsae.train(config, data, init=init)
    ckpt = str(tmp_path / "ckpt")
    cut = jsae.Trainer({**config, "checkpoint_path": ckpt}, data, init=init)
    cut.save_checkpoint()
    cut.close()
    resumed = jsae.train(
        {**config, "checkpoint_path": ckpt, "resume_from_checkpoint": ckpt}, data, init=init
    )
    for name, value in straight.params.items():
        assert np.array_equal(np.asarray(resumed.params[name]), np.asarray(value)), name


def test_leftovers_of_writers_killed_mid_write_are_cleaned_not_fatal(tmp_path: Path) -> None:
    """A run killed while it wrote a host file leaves a hidden temporary file in host/, and
    orbax a temporary step directory in state/. Reading the checkpoint (`jsae.load`) leaves them
    alone (they may be a live run's step in progress); the run that resumes there removes them
    and checkpoints on (a leftover host file used to make every later save fail)."""
    from jsae.fsutil import _sibling_prefix

    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(20)]
    first = jsae.Trainer(_list_config(tmp_path), chunks)
    _stepped(first, 4)
    first.close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    prefix = _sibling_prefix(Path("7.p0.json"), "tmp").rsplit("~", 2)[0]
    stale_host = tmp_path / "ckpt" / "host" / f"{prefix}~{int(dead.stdout)}~abcd"
    stale_host.write_text("{")
    in_progress = tmp_path / "ckpt" / "state" / "6.orbax-checkpoint-tmp-1234"
    in_progress.mkdir()

    assert jsae.load(tmp_path / "ckpt").cfg.d_sae == 32
    assert stale_host.exists() and in_progress.exists(), "a reader deletes nothing"

    resumed = jsae.Trainer(
        _list_config(
            tmp_path, resume_from_checkpoint=str(tmp_path / "ckpt"), checkpoint_every_steps=4
        ),
        chunks,
    )
    resumed.fit()
    assert resumed.checkpointer.steps() == [4, 8, 12, 16, 20]
    assert not stale_host.exists() and not in_progress.exists()
    host_files = sorted(p.name for p in (tmp_path / "ckpt" / "host").iterdir())
    assert host_files == [f"{s}.p0.json" for s in (12, 16, 20, 4, 8)]


def test_a_crashed_run_resumed_elsewhere_keeps_every_metrics_row(tmp_path: Path) -> None:
    """A run that dies on a bad batch right after a checkpoint, resumed into another checkpoint
    directory: the new metrics.jsonl holds the earlier run's rows up to the checkpoint (the row
    of the step before it included: it was still held back for the next step when the run
    died) and the rest, as an uninterrupted run's."""
    rng = np.random.default_rng(0)
    good = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(8)]
    bad = [*good[:4], np.zeros((32, 9), np.float32)]  # step 4's batch has the wrong width
    config = _list_config(
        tmp_path, training_tokens=32 * 8, checkpoint_every_steps=4, wandb_log_frequency=1
    )

    def loss_steps(path: Path) -> list[int]:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [row["step"] for row in rows if "losses/overall_loss" in row]

    first = jsae.Trainer(config, bad)
    with pytest.raises(jsae.ShapeError):
        first.fit()
    first.close()
    assert first.checkpointer.steps() == [4]
    assert loss_steps(tmp_path / "ckpt" / "metrics.jsonl") == [0, 1, 2, 3]
    elsewhere = tmp_path / "ckpt2"
    resumed = jsae.Trainer(
        {**config, "resume_from_checkpoint": str(tmp_path / "ckpt"),
         "checkpoint_path": str(elsewhere)},
        good,
    )  # fmt: skip
    resumed.fit()
    resumed.close()
    uninterrupted = jsae.Trainer({**config, "checkpoint_path": str(tmp_path / "ref")}, good)
    uninterrupted.fit()
    uninterrupted.close()
    assert loss_steps(elsewhere / "metrics.jsonl") == list(range(8))
    assert loss_steps(tmp_path / "ref" / "metrics.jsonl") == list(range(8))


@pytest.mark.parametrize("damage", ["host file", "orbax metadata"])
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(
    tmp_path: Path, damage: str
) -> None:
    """A truncated file in the newest checkpoint (a disk filled up, a copy cut short): the
    resume says which step it could not read and why, continues from the newest readable one,
    writes the damaged step again, and ends as an uninterrupted run."""
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(12)]
    config = _list_config(tmp_path, training_tokens=32 * 12, checkpoint_every_steps=4)
    uninterrupted = jsae.Trainer({**config, "checkpoint_path": str(tmp_path / "ref")}, chunks)
    uninterrupted.fit()

    first = jsae.Trainer(config, chunks)
    _stepped(first, 8, every=4)
    first.close()
    damaged = {
        "host file": tmp_path / "ckpt" / "host" / "8.p0.json",
        "orbax metadata": tmp_path / "ckpt" / "state" / "8" / "default" / "_METADATA",
    }[damage]
    damaged.write_bytes(damaged.read_bytes()[:10])

    resumed_config = {**config, "resume_from_checkpoint": str(tmp_path / "ckpt")}
    with pytest.warns(UserWarning, match=r"checkpoint\(s\) \[8\] .* could not be read .*step 4"):
        resumed = jsae.Trainer(resumed_config, chunks)
    assert resumed.steps_done == 4
    resumed.fit()
    assert resumed.checkpointer.steps() == [4, 8, 12]
    for name, value in uninterrupted.sae.params.items():
        assert np.array_equal(np.asarray(resumed.sae.params[name]), np.asarray(value)), name

    (tmp_path / "ckpt" / "host" / "4.p0.json").write_text("{")  # no readable step left
    for step in (8, 12):
        (tmp_path / "ckpt" / "host" / f"{step}.p0.json").unlink()
    with pytest.raises(jsae.FormatError, match=r"no readable checkpoint in .*step 12: .*step 4"):
        jsae.Trainer(resumed_config, chunks)


def test_a_reader_passes_quietly_over_a_step_the_writer_deletes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader of a live run (a resume into another checkpoint_path, or `jsae.load`) can list
    a step that the run's retention deletes before it is read. That step was replaced, not
    damaged: the reader takes the newest step still there, without a warning."""
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(12)]
    config = _list_config(tmp_path, training_tokens=32 * 12)
    first = jsae.Trainer(config, chunks)
    _stepped(first, 8, every=4)
    first.close()
    restore = Checkpointer.restore_state

    def retention_strikes(self: Checkpointer, step: int, abstract: object) -> object:
        if step == 8:  # the writer saved step 12 and dropped 8 after the reader listed it
            writer = Checkpointer(tmp_path / "ckpt")
            writer.delete(8)
            writer.close()
        return restore(self, step, abstract)

    monkeypatch.setattr(Checkpointer, "restore_state", retention_strikes)
    reader_config = {
        **config,
        "resume_from_checkpoint": str(tmp_path / "ckpt"),
        "checkpoint_path": str(tmp_path / "reader"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before: "checkpoint(s) [8] ... could not be read"
        reader = jsae.Trainer(reader_config, chunks)
    assert reader.steps_done == 4
    reader.close()


def test_resume_refuses_settings_that_would_change_the_activations(tmp_path: Path) -> None:
    """The run's own (synthetic) source is rebuilt from the seed and its settings: a resume
    that changed them would go on with another dataset, so it is refused; a data setting the
    source does not read passes with a warning; activations given to the trainer are the
    caller's business, whatever the seed."""
    config = _list_config(tmp_path, synthetic_n_features=24)
    first = jsae.Trainer(config)
    _stepped(first, 4)
    first.close()
    resume = {**config, "resume_from_checkpoint": str(tmp_path / "ckpt")}
    for change in ({"seed": 7}, {"synthetic_n_features": 40}):
        with pytest.raises(jsae.ConfigError, match=rf"\['{next(iter(change))}'\] differ from the"):
            jsae.Trainer({**resume, **change})
    with pytest.warns(UserWarning, match=r"data settings that differ .*\['activations_path'\]"):
        moved = jsae.Trainer({**resume, "activations_path": str(tmp_path / "elsewhere")})
    assert moved.steps_done == 4
    moved.close()
    rng = np.random.default_rng(0)
    given = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(20)]
    assert jsae.Trainer({**resume, "seed": 7}, given).steps_done == 4


def test_one_large_array_resumes_without_saving_its_rows(tmp_path: Path) -> None:
    """`jsae.train(config, X)` with X all the rows: checkpoints record how many of the array's
    rows are left (they used to hold those rows: most of the dataset, in every checkpoint),
    and the resumed run ends as the uninterrupted one."""
    rows = np.random.default_rng(0).normal(size=(32 * 20 + 7, 8)).astype(np.float32)
    uninterrupted = jsae.Trainer(_list_config(tmp_path, checkpoint_path=str(tmp_path / "r")), rows)
    uninterrupted.fit()
    first = jsae.Trainer(_list_config(tmp_path), rows)
    _stepped(first, 5)
    first.close()
    assert sorted(p.name for p in (tmp_path / "ckpt" / "host").iterdir()) == ["5.p0.json"]
    host = json.loads((tmp_path / "ckpt" / "host" / "5.p0.json").read_text())
    assert host["feeder"]["tail_rows"] == 32 * 15 + 7
    with pytest.raises(jsae.ConfigError, match=r"100 rows in the 1 item.* had 487 of them"):
        jsae.Trainer(
            _list_config(tmp_path, resume_from_checkpoint=str(tmp_path / "ckpt")), rows[:100]
        )
    resumed = jsae.Trainer(
        _list_config(tmp_path, resume_from_checkpoint=str(tmp_path / "ckpt")), rows
    )
    resumed.fit()
    for name, value in uninterrupted.sae.params.items():
        assert np.array_equal(np.asarray(resumed.sae.params[name]), np.asarray(value)), name
