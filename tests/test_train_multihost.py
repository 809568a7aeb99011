"""Multi-host training: two real processes on localhost (gloo CPU collectives), 2 devices each,
a 2x2 ("data", "model") mesh over the 4 global devices, each host feeding its own half of every
batch. The result equals one process training on a 2x2 mesh of local devices."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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
assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.device_count())
assert trainer.local_rows == 32
trainer.fit()
jax.distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    script = WORKER.format(config=CONFIG)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i), port, str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        for i in range(2)
    ]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"worker failed:\n{stdout}\n{stderr[-4000:]}"

    single = jsae.train(dict(CONFIG, output_path=None))  # 2x2 mesh of this process's devices
    got = load_file(out / "sae_weights.safetensors")
    for name, value in single.params.items():
        assert_close(got[name], value, atol=2e-5, rtol=2e-4, what=name)
    assert not np.allclose(got["W_dec"], jsae.SAE.init(single.cfg).params["W_dec"])
