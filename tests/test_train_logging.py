"""Run reports: SAELens metric keys in the JSONL file, wandb offline without credentials (one
line says so; nothing reaches the network), a progress bar with tokens/s."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jsae

STEP_KEYS = {
    "losses/overall_loss",
    "losses/mse_loss",
    "metrics/explained_variance",
    "metrics/explained_variance_legacy",
    "metrics/explained_variance_legacy_std",
    "metrics/l0",
    "sparsity/mean_passes_since_fired",
    "sparsity/dead_features",
    "details/current_learning_rate",
    "details/n_training_samples",
}
SPARSITY_KEYS = {
    "metrics/mean_log10_feature_sparsity",
    "sparsity/below_1e-5",
    "sparsity/below_1e-6",
}


def _batches(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize(
    ("arch", "extra_keys"),
    [
        (
            {"architecture": "standard", "l1_warm_up_steps": 4},
            {"losses/l1_loss", "details/l1_coefficient"},
        ),
        (
            {"architecture": "batchtopk", "k": 3},
            {"losses/auxiliary_reconstruction_loss", "metrics/topk_threshold"},
        ),
    ],
)
def test_jsonl_metrics_use_saelens_keys(tmp_path: Path, arch: dict, extra_keys: set) -> None:
    config = {
        **arch, "d_in": 8, "d_sae": 16, "train_batch_size_tokens": 32, "training_tokens": 32 * 12,
        "wandb_log_frequency": 3, "feature_sampling_window": 5, "log_to_wandb": False,
        "checkpoint_path": str(tmp_path / "run"), "output_path": str(tmp_path / "out"),
        "progress_bar": False,
    }  # fmt: skip
    jsae.train(config, _batches(12))
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)  # written in order
    step_rows = [r for r in rows if "losses/overall_loss" in r]
    assert [r["step"] for r in step_rows] == [2, 5, 8, 11]  # (step + 1) % 3 == 0, as SAELens
    for row in step_rows:
        assert STEP_KEYS | extra_keys <= set(row), sorted(STEP_KEYS | extra_keys - set(row))
        assert row["details/n_training_samples"] == (row["step"] + 1) * 32
    sparsity_rows = [r for r in rows if "metrics/mean_log10_feature_sparsity" in r]
    assert [r["step"] for r in sparsity_rows] == [5, 10]
    assert all(set(r) >= SPARSITY_KEYS for r in sparsity_rows)
    if "l1_warm_up_steps" in arch:
        assert step_rows[0]["details/l1_coefficient"] == pytest.approx(0.5)  # step 2 of 4
        assert step_rows[-1]["details/l1_coefficient"] == pytest.approx(1.0)
    assert (tmp_path / "out" / "metrics.jsonl").read_text() == (
        tmp_path / "run" / "metrics.jsonl"
    ).read_text()


def test_a_run_without_a_checkpoint_directory_leaves_no_temporary_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its metrics.jsonl lives in a temporary directory until the output holds a copy; the
    directory goes with the trainer (a notebook's hundredth run must not leave 100 behind)."""
    import gc
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    config = {
        "architecture": "standard", "d_in": 8, "d_sae": 16, "train_batch_size_tokens": 32,
        "training_tokens": 32 * 4, "wandb_log_frequency": 1, "log_to_wandb": False,
        "checkpoint_path": None, "output_path": str(tmp_path / "out"), "progress_bar": False,
    }  # fmt: skip
    trainer = jsae.Trainer(config, _batches(4))
    trainer.fit()
    (temporary,) = scratch.iterdir()  # the run's metrics, while the trainer lives
    rows = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [0, 1, 2, 3]
    del trainer
    gc.collect()
    assert not temporary.exists()
    jsae.train(config | {"overwrite_output": True}, _batches(4))
    gc.collect()
    assert list(scratch.iterdir()) == []


def test_wandb_without_credentials_logs_offline_and_says_so(tmp_path: Path) -> None:
    """A real wandb run in a clean environment: no API key, no netrc, no WANDB_MODE; the
    defaults otherwise, so the final SAE is logged as an artifact named from the default run
    name (which holds a '+': 'Tokens-1.920e+02', a character wandb refuses in names)."""
    script = f"""
import numpy as np, jsae
rng = np.random.default_rng(0)
batches = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(6)]
jsae.train({{"architecture": "standard", "d_in": 8, "d_sae": 16, "train_batch_size_tokens": 32,
            "training_tokens": 192, "wandb_log_frequency": 2, "log_to_wandb": True,
            "wandb_project": "jsae-test", "checkpoint_path": None,
            "output_path": {str(tmp_path / "out")!r}}}, batches)
"""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WANDB_", "XLA_")) and k not in ("NETRC", "HOME")
    }
    env.update(HOME=str(tmp_path), WANDB_DIR=str(tmp_path), NETRC=str(tmp_path / "none"))
    env.update(WANDB_BASE_URL="http://127.0.0.1:9")  # a dead port: any network attempt fails fast
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "no wandb credentials" in line]
    assert len(lines) == 1 and "offline" in lines[0] and "wandb sync" in lines[0]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert "tok/s" in proc.stderr  # the progress bar
    assert (tmp_path / "out" / "sae_weights.safetensors").exists()


def test_wandb_online_without_credentials_is_one_clear_error(tmp_path: Path) -> None:
    """WANDB_MODE=online asks for the hub, so no offline fallback: `jsae train` exits with one
    line saying how to log in or log offline (it used to print wandb's whole traceback)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WANDB_", "XLA_")) and k not in ("NETRC", "HOME")
    }
    env.update(HOME=str(tmp_path), WANDB_DIR=str(tmp_path), NETRC=str(tmp_path / "none"))
    env.update(WANDB_MODE="online", WANDB_BASE_URL="http://127.0.0.1:9")
    args = ["d_in=8", "d_sae=16", "train_batch_size_tokens=32", "training_tokens=64"]
    proc = subprocess.run(
        [sys.executable, "-m", "jsae", "train", *args, f"output_path={tmp_path / 'out'}",
         f"checkpoint_path={tmp_path / 'ckpt'}", "progress_bar=false"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "jsae train: error: wandb could not start a run (WANDB_MODE=online)" in proc.stderr
    assert "log_to_wandb=false" in proc.stderr
    assert not (tmp_path / "out").exists()


def _run_with_offline_wandb(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter logging wandb offline under tmp_path; it must pass."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "XLA_"))}
    env.update(WANDB_DIR=str(tmp_path), WANDB_MODE="offline", WANDB_BASE_URL="http://127.0.0.1:9")
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_resumed_run_logs_to_the_same_wandb_run(tmp_path: Path) -> None:
    """The wandb run id goes into every checkpoint; a resumed run goes on in that run (offline
    here: each session writes `offline-run-<time>-<id>`, and `wandb sync` joins them)."""
    script = f"""
import json, numpy as np, jsae
rng = np.random.default_rng(0)
batches = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(12)]
config = {{"architecture": "standard", "d_in": 8, "d_sae": 16, "train_batch_size_tokens": 32,
          "training_tokens": 32 * 6, "wandb_log_frequency": 2, "log_to_wandb": True,
          "wandb_project": "jsae-test",
          "checkpoint_path": {str(tmp_path / "ckpt")!r}, "checkpoint_every_steps": 3,
          "output_path": None, "progress_bar": False}}
jsae.train(config, batches[:6])
jsae.train(dict(config, training_tokens=32 * 12, resume_from_checkpoint=config["checkpoint_path"]),
           batches)
"""
    proc = _run_with_offline_wandb(script, tmp_path)
    assert "resumed from step 6" in proc.stderr
    ids = {
        step: json.loads((tmp_path / "ckpt" / "host" / f"{step}.p0.json").read_text())["wandb_id"]
        for step in (3, 6, 9, 12)
    }
    assert len(set(ids.values())) == 1 and ids[3], ids
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(run.name.endswith("-" + ids[3]) for run in runs), runs


def test_fit_again_after_ctrl_c_logs_to_the_same_wandb_run(tmp_path: Path) -> None:
    """A notebook's fit() interrupted by Ctrl-C and called again goes on in its wandb run (it
    used to start a second one)."""
    script = """
import os, signal, numpy as np, jsae
rng = np.random.default_rng(0)
batches = [rng.normal(size=(32, 8)).astype(np.float32) for _ in range(6)]
def interrupting():
    for i, batch in enumerate(batches):
        if i == 3:
            os.kill(os.getpid(), signal.SIGINT)
        yield batch
config = {"architecture": "standard", "d_in": 8, "d_sae": 16, "train_batch_size_tokens": 32,
          "training_tokens": 32 * 6, "wandb_log_frequency": 1, "log_to_wandb": True,
          "wandb_project": "jsae-test", "checkpoint_path": None, "output_path": None,
          "progress_bar": False}
trainer = jsae.Trainer(config, interrupting())
try:
    trainer.fit()
except KeyboardInterrupt:
    print("interrupted at", trainer.steps_done)
trainer.fit()
"""
    proc = _run_with_offline_wandb(script, tmp_path)
    assert "interrupted at 4" in proc.stdout
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<run id>, with "-1" added when both start in the same second
    ids = {re.fullmatch(r"offline-run-\d+_\d+-(\w+?)(-\d+)?", run.name)[1] for run in runs}
    assert len(runs) == 2 and len(ids) == 1, runs


def test_sparsity_thresholds_compare_the_frequencies_themselves() -> None:
    """A latent firing exactly once in 1e5 tokens is at 1e-5, not below it (SAELens compares
    count / tokens < 1e-5); recovering the frequency from the float32 log put it below."""
    from jsae.training.trainer import sparsity_summary

    counts = np.array([0, 1, 10, 2, 100], np.int32)
    _, at_1e5 = sparsity_summary(counts, 100_000)
    assert (at_1e5["sparsity/below_1e-5"], at_1e5["sparsity/below_1e-6"]) == (1, 1)
    _, at_1e6 = sparsity_summary(counts, 1_000_000)
    assert (at_1e6["sparsity/below_1e-5"], at_1e6["sparsity/below_1e-6"]) == (3, 1)
    log, row = sparsity_summary(counts, 100_000)
    assert row["metrics/mean_log10_feature_sparsity"] == pytest.approx(float(np.mean(log)))
    assert log[2] == pytest.approx(-4.0, abs=1e-6)


def test_steps_on_device_batches_make_no_host_to_device_transfer() -> None:
    """Once compiled, a step on a batch already on the device sends nothing from the host
    (the activation scale used to be placed again every step)."""
    import jax

    config = {
        "architecture": "standard", "d_in": 8, "d_sae": 16, "train_batch_size_tokens": 32,
        "training_tokens": 32 * 4, "normalize_activations": "expected_average_only_in",
        "log_to_wandb": False, "checkpoint_path": None, "output_path": None,
        "progress_bar": False,
    }  # fmt: skip
    trainer = jsae.Trainer(config, [])
    x = jax.device_put(_batches(1)[0])
    jax.block_until_ready(trainer.step(x))  # compiles; estimates the scale from x
    with jax.transfer_guard_host_to_device("disallow"):
        for _ in range(2):
            jax.block_until_ready(trainer.step(x))
