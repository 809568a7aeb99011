"""Multi-host training: two real processes on localhost (gloo CPU collectives), 2 devices each,
a 2x2 ("data", "model") mesh over the 4 global devices, each host feeding its own half of every
batch. The result equals one process training on a 2x2 mesh of local devices, also when the two
processes are killed part way and two new ones resume from their shared checkpoint, and when
a checkpoint of a global-position source is resumed by another number of processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close
from safetensors.numpy import load_file

import jsae

CONFIG = {
    "architecture": "topk",
    "d_in": 16,
    "d_sae": 64,
    "k": 3,
    "lr": 3e-3,
    "train_batch_size_tokens": 64,
    "training_tokens": 64 * 30,
    "dead_feature_window": 5,
    "normalize_activations": "expected_average_only_in",
    "n_batches_for_norm_estimate": 3,
    "mesh": {"data": 2, "model": 2},
    "log_to_wandb": False,
    "progress_bar": False,
    "checkpoint_path": None,
    "use_sparse_activations": False,
}

WORKER = """
import sys, jax
jax.config.update("jax_num_cpu_devices", 2)
import jsae
process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
config = dict({config!r}, output_path=out if process_id == 0 else None,
              coordinator_address="127.0.0.1:" + port, num_processes=2, process_id=process_id)
trainer = jsae.Trainer(config)
assert (jax.process_count(), jax.device_count()) == (2, 4)
assert trainer.local_rows == 32
trainer.fit()
jax.distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: str, *args: str) -> list[subprocess.Popen]:
    """Processes 0 and 1 of a two-process run, with their own coordinator port."""
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    return [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i), port, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]


def _kill(procs: list[subprocess.Popen]) -> None:
    """SIGKILL whichever of `procs` still runs (a failed worker leaves its peer waiting)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    for proc in procs:
        proc.communicate()


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    """Wait for both processes to succeed; their stderr."""
    errors = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"worker failed:\n{stdout}\n{stderr[-4000:]}"
            errors.append(stderr)
    finally:
        _kill(procs)
    return errors


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _finish(_launch(WORKER.format(config=CONFIG), str(out)))

    single = jsae.train(dict(CONFIG, output_path=None))  # 2x2 mesh of this process's devices
    got = load_file(out / "sae_weights.safetensors")
    for name, value in single.params.items():
        assert_close(got[name], value, atol=2e-5, rtol=2e-4, what=name)
    assert not np.allclose(got["W_dec"], jsae.SAE.init(single.cfg).params["W_dec"])


CKPT_CONFIG = dict(
    CONFIG,
    training_tokens=64 * 40,
    feature_sampling_window=15,
    checkpoint_every_steps=10,
)

UNINTERRUPTED = {  # the same run without checkpoints, to compare with
    **{k: v for k, v in CKPT_CONFIG.items() if k != "checkpoint_every_steps"},
    "checkpoint_path": None,
}

# Both processes get the same configuration (one output_path, one shared checkpoint_path), as
# from one YAML file. With STALL >= 0 the source stops answering after STALL items (3 for the
# scale estimate, then one per step: checkpoints 10 and 20 are on disk, steps 21-25 are not)
# until the test creates <ckpt>.go, so the run can be killed or signalled at a known point;
# otherwise the run resumes from the checkpoint. A run stopped by a signal exits as the CLI
# does: 130 for SIGINT, 143 for SIGTERM.
CKPT_WORKER = """
import pathlib, sys, time, jax
jax.config.update("jax_num_cpu_devices", 2)
import jsae
from jsae.errors import TrainingInterrupted
from jsae.training.sources import make_source
process_id, port, ckpt, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
stall = int(sys.argv[5])
config = dict({config!r}, checkpoint_path=ckpt, output_path=out,
              coordinator_address="127.0.0.1:" + port, num_processes=2, process_id=process_id)

class Stalling:
    def __init__(self, source, items):
        self.source, self.items = source, items
    def __iter__(self):
        for i, batch in enumerate(self.source):
            if i == self.items:
                pathlib.Path(ckpt + f".stalled.p{{process_id}}").touch()
                while not pathlib.Path(ckpt + ".go").exists():
                    time.sleep(0.02)
            yield batch
    def state(self):
        return self.source.state()
    def restore(self, state):
        self.source.restore(state)
    position_is_global = property(lambda self: self.source.position_is_global)

if stall >= 0:
    jax.distributed.initialize(config["coordinator_address"], 2, process_id)
    source = Stalling(make_source(jsae.TrainConfig.coerce(config), 32), stall)
else:
    config["resume_from_checkpoint"] = ckpt
    source = None
trainer = jsae.Trainer(config, source)
try:
    trainer.fit()
except TrainingInterrupted as stop:
    print(stop, file=sys.stderr)
    jax.distributed.shutdown()
    sys.exit(130 if "(SIGINT)" in str(stop) else 143)
jax.distributed.shutdown()
"""


def _wait_until_stalled(procs: list[subprocess.Popen], ckpt: Path, step: int) -> None:
    """Wait until both CKPT_WORKER processes stall after `step` steps (their marker files)."""
    markers = [Path(f"{ckpt}.stalled.p{i}") for i in range(2)]
    deadline = time.time() + 240
    while not all(m.exists() for m in markers):
        for proc in procs:
            assert proc.poll() is None, f"worker ended early:\n{proc.communicate()[1][-4000:]}"
        assert time.time() < deadline, f"the workers never reached step {step}"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_processes_killed_and_resumed_train_like_one(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    script = CKPT_WORKER.format(config=CKPT_CONFIG)
    killed = _launch(script, str(ckpt), str(out), str(3 + 25))
    try:
        _wait_until_stalled(killed, ckpt, 25)
    finally:
        _kill(killed)
    assert [proc.returncode for proc in killed] == [-signal.SIGKILL] * 2
    committed = sorted(int(p.name) for p in (ckpt / "state").iterdir() if p.name.isdigit())
    assert committed == [10, 20]
    assert sorted(p.name for p in (ckpt / "host").iterdir()) == [
        "10.p0.json", "10.p1.json", "20.p0.json", "20.p1.json"
    ]  # fmt: skip
    assert not out.exists()
    one_ckpt = tmp_path / "one" / "ckpt"  # for one process to resume the same checkpoint
    shutil.copytree(ckpt, one_ckpt)

    errors = _finish(_launch(script, str(ckpt), str(out), "-1"))
    assert "resumed from step 20" in errors[0]

    # One process, a 2x2 mesh of its own devices, no interruption.
    single = jsae.Trainer(dict(UNINTERRUPTED, output_path=None))
    single.fit()
    got = load_file(out / "sae_weights.safetensors")
    for name, value in single.final_sae().params.items():
        assert_close(got[name], value, atol=2e-5, rtol=2e-4, what=name)
    assert np.array_equal(
        load_file(out / "sparsity.safetensors")["sparsity"], single.log_feature_sparsity()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ckpt", "ckpt.stalled.p0", "ckpt.stalled.p1", "one", "out"]
    )  # process 0 alone wrote the output, leaving nothing else behind

    # The synthetic source's position is global: one process takes over the two's checkpoint.
    one = jsae.Trainer(
        dict(
            CKPT_CONFIG,
            checkpoint_path=str(one_ckpt),
            resume_from_checkpoint=str(one_ckpt),
            output_path=None,
        )
    )
    assert one.steps_done == 20
    one.fit()
    for name, value in single.final_sae().params.items():
        assert_close(one.final_sae().params[name], value, atol=2e-5, rtol=2e-4, what=name)


# Two processes resume (or refuse) a checkpoint one process wrote.
RESUME_WORKER = """
import sys, jax
jax.config.update("jax_num_cpu_devices", 2)
import jsae
process_id, port, ckpt, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
config = dict({config!r}, checkpoint_path=ckpt, output_path=out, resume_from_checkpoint=ckpt,
              coordinator_address="127.0.0.1:" + port, num_processes=2, process_id=process_id)
trainer = jsae.Trainer(config)
trainer.fit()
jax.distributed.shutdown()
"""


@pytest.mark.slow
def test_two_processes_resume_what_one_process_wrote(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    first = jsae.Trainer(dict(CKPT_CONFIG, checkpoint_path=str(ckpt), output_path=None))
    for _ in range(17):
        first.step()
    first.save_checkpoint()
    errors = _finish(_launch(RESUME_WORKER.format(config=CKPT_CONFIG), str(ckpt), str(out)))
    assert "resumed from step 17" in errors[0] and "written by 1 process(es)" in errors[0]

    single = jsae.Trainer(dict(UNINTERRUPTED, output_path=None))
    single.fit()
    got = load_file(out / "sae_weights.safetensors")
    for name, value in single.final_sae().params.items():
        assert_close(got[name], value, atol=2e-5, rtol=2e-4, what=name)


@pytest.mark.slow
def test_a_per_process_position_refuses_another_process_count(tmp_path: Path) -> None:
    """A plain list of batches is fast-forwarded item by item: its position means something
    only with the process count (and share of each batch) that wrote it."""
    ckpt = tmp_path / "ckpt"
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(64, 16)).astype(np.float32) for _ in range(12)]
    first = jsae.Trainer(dict(CKPT_CONFIG, checkpoint_path=str(ckpt), output_path=None), batches)
    for _ in range(5):
        first.step()
    first.save_checkpoint()
    procs = _launch(RESUME_WORKER.format(config=CKPT_CONFIG), str(ckpt), str(tmp_path / "out"))
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=300)
            assert proc.returncode != 0
            assert "written by 1 process(es) but this run has 2" in stderr, stderr[-3000:]
            assert "num_processes=1" in stderr
    finally:
        _kill(procs)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mesh", "message"),
    [
        # with 'data' of size 1 each process would feed half a batch the mesh replicates
        ({"data": 1, "model": 4}, "'data' axis must split batches"),
        # two devices, both process 0's (the message blamed the data axis, and 0 rows)
        ({"data": 2}, r"takes 2 of the 4 devices, all of process\(es\) \[0\]"),
    ],
)
def test_a_mesh_that_does_not_split_batches_over_processes_is_refused(
    tmp_path: Path, mesh: dict, message: str
) -> None:
    config = dict(CONFIG, mesh=mesh)
    procs = _launch(WORKER.format(config=config), str(tmp_path / "out"))
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=300)
            assert proc.returncode != 0
            assert "ConfigError" in stderr and re.search(message, stderr), stderr[-3000:]
    finally:
        _kill(procs)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_one_process_stops_both_at_one_step_and_they_resume(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """A preemption notice (SIGTERM), or a Ctrl-C (SIGINT, sent on as one), to one of two
    processes stops both after the same step, through JAX's preemption sync, with a checkpoint
    of that step; two new processes resume it and end where one uninterrupted process does."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    script = CKPT_WORKER.format(config=CKPT_CONFIG)
    stopped = _launch(script, str(ckpt), str(out), str(3 + 15))  # scale estimate, 15 steps
    try:
        _wait_until_stalled(stopped, ckpt, 15)
        stopped[1].send_signal(signum)
        time.sleep(0.5)  # the notice reaches the coordination service
        Path(f"{ckpt}.go").touch()
        errors = [proc.communicate(timeout=240)[1] for proc in stopped]
    finally:
        _kill(stopped)
    # The signalled process names its signal; its peer got a preemption notice.
    expected = {signal.SIGTERM: ["SIGTERM", "SIGTERM"], signal.SIGINT: ["SIGTERM", "SIGINT"]}
    names = expected[signum]
    assert [proc.returncode for proc in stopped] == [
        143 if n == "SIGTERM" else 130 for n in names
    ], errors[0][-3000:] + errors[1][-3000:]
    steps = [
        int(re.search(rf"interrupted \({name}\) at step (\d+)", err).group(1))
        for name, err in zip(names, errors, strict=True)
    ]
    assert steps[0] == steps[1] and 15 <= steps[0] < 40, steps
    assert "Traceback" not in errors[0] + errors[1]
    committed = sorted(int(p.name) for p in (ckpt / "state").iterdir() if p.name.isdigit())
    assert committed == sorted({*range(10, steps[0] + 1, 10), steps[0]})  # every 10, and the stop
    assert not out.exists()

    _finish(_launch(script, str(ckpt), str(out), "-1"))
    single = jsae.Trainer(dict(UNINTERRUPTED, output_path=None))
    single.fit()
    got = load_file(out / "sae_weights.safetensors")
    for name, value in single.final_sae().params.items():
        assert_close(got[name], value, atol=2e-5, rtol=2e-4, what=name)


# jsae.train on a language model, as `jsae train` runs it, started on two processes by the
# config's coordinator settings.
MODEL_WORKER = """
import json, sys, jax
jax.config.update("jax_num_cpu_devices", 2)
import jsae
process_id, port, config = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
jsae.train(dict(config, coordinator_address="127.0.0.1:" + port, num_processes=2,
                process_id=process_id))
from jsae.activations.config import LanguageModelSettings
from jsae.activations.pipeline import activation_store, load_model_for, train_saes
settings = LanguageModelSettings(model_name=config["model_name"], context_size=16,
                                 dataset_path=config["dataset_path"], streaming=False)
hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
store = activation_store(settings, load_model_for(settings), batch_size=64, hook_names=hooks)
try:
    train_saes(dict.fromkeys(hooks, {"d_in": 16, "d_sae": 32}), store)
except jsae.ConfigError as refused:
    print("refused:", refused, file=sys.stderr)
store.close()
jax.distributed.shutdown()
"""


@pytest.mark.slow
def test_two_processes_train_on_a_model_and_one_reads_their_checkpoint(tmp_path: Path) -> None:
    """The config's coordinator settings start both processes before the model is loaded (it
    used to start JAX's backend first: "initialize() must be called before any JAX calls");
    and `jsae.load` of their checkpoint, whose source positions are per process, gives one
    process the SAE of the run (it used to refuse: "written by 2 process(es)"). train_saes is
    refused on several processes."""
    from jsae.activations.toy import make_corpus, make_model_dir, make_tokenizer, save_text_dataset

    corpus = make_corpus(120, seed=3)
    make_model_dir(tmp_path / "model", make_tokenizer(corpus, tmp_path / "tok"), d_model=16,
                   n_positions=32)  # fmt: skip
    save_text_dataset(corpus, tmp_path / "corpus.jsonl", fmt="jsonl")
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    config = {
        "model_name": str(tmp_path / "model"),
        "hook_name": "blocks.0.hook_resid_post",
        "dataset_path": str(tmp_path / "corpus.jsonl"),
        "streaming": False,
        "context_size": 16,
        "store_batch_size_prompts": 4,
        "n_batches_in_buffer": 2,
        **{k: CONFIG[k] for k in ("architecture", "d_in", "d_sae", "k", "mesh")},
        "train_batch_size_tokens": 64,
        "training_tokens": 64 * 6,
        "checkpoint_path": str(ckpt),
        "checkpoint_every_steps": 3,
        "output_path": str(out),
        "log_to_wandb": False,
        "progress_bar": False,
    }
    errors = _finish(_launch(MODEL_WORKER, json.dumps(config)))
    # several SAEs in threads would interleave their collectives (silently wrong, or a crash)
    assert all("refused: train_saes trains each SAE in a thread" in e for e in errors), errors
    saved = load_file(out / "sae_weights.safetensors")
    read = jsae.load(ckpt)  # the final checkpoint (step 6), on this one process
    for name, value in saved.items():
        assert np.array_equal(np.asarray(read.params[name]), value), name
