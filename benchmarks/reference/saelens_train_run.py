"""Reference worker for bench_train_run: SAELens's `SAETrainer.step` over a stored batch file.

Started with (batches.npy, init.safetensors, settings.json): builds a StandardTrainingSAE from
the settings (seeded), saves its initial parameters to init.safetensors (jsae starts from the
very same weights), and builds an SAETrainer. Then answers {"start": i, "stop": j} requests on
stdin by training on batches i..j-1 of the memory-mapped file, replying with each step's wall
time (the step only: the batch is read before the clock starts, the metrics after it stops)
and each step's L0 and explained variance. {"save": path} writes the decoder to an .npy file.
"""

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

warnings.filterwarnings("ignore")
from sae_lens.config import LoggingConfig, SAETrainerConfig  # noqa: E402
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig  # noqa: E402
from sae_lens.training.sae_trainer import SAETrainer  # noqa: E402

batches_file, init_file, settings_file = sys.argv[1:4]
s = json.loads(Path(settings_file).read_text())
batches = np.load(batches_file, mmap_mode="r")  # [steps, B, d_in]
torch.manual_seed(s["seed"])
sae = StandardTrainingSAE(
    StandardTrainingSAEConfig(
        d_in=s["d_in"],
        d_sae=s["d_sae"],
        l1_coefficient=s["l1_coefficient"],
        l1_warm_up_steps=s["l1_warm_up_steps"],
    )
)
save_file({k: v.detach().clone().contiguous() for k, v in sae.named_parameters()}, init_file)
trainer = SAETrainer(
    SAETrainerConfig(
        total_training_samples=s["train_batch_size_tokens"] * s["steps"],
        train_batch_size_samples=s["train_batch_size_tokens"],
        lr=s["lr"],
        lr_end=s["lr"] / 10,
        logger=LoggingConfig(log_to_wandb=False),
    ),
    sae,
    iter([]),
)
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 - mean squared error / mean total variance (per token, summed over d_in)."""
    error = (x_hat - x).pow(2).sum(-1).mean()
    variance = (x - x.mean(0)).pow(2).sum(-1).mean()
    return float(1 - error / variance)


for line in sys.stdin:
    request = json.loads(line)
    if "save" in request:
        np.save(request["save"], sae.W_dec.detach().numpy())
        print(json.dumps({"saved": request["save"]}), flush=True)
        continue
    reply = {"times": [], "l0": [], "explained_variance": []}
    for i in range(request["start"], request["stop"]):
        x = torch.from_numpy(np.array(batches[i]))
        t0 = time.perf_counter()  # what `SAETrainer.fit` does per step, without wandb
        trainer.maybe_reset_sparsity()
        out = trainer.step(x)
        trainer.n_training_steps += 1
        reply["times"].append(time.perf_counter() - t0)
        with torch.no_grad():
            reply["l0"].append(float((out.feature_acts > 0).sum(-1).float().mean()))
            reply["explained_variance"].append(explained_variance(out.sae_in, out.sae_out))
    print(json.dumps(reply), flush=True)
