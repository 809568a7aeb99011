"""Does training on an accelerator end where training on the CPU does? Every architecture.

    python benchmarks/device_check.py                 # the default backend (a GPU or TPU) vs CPU
    python benchmarks/device_check.py --steps 50 --archs "topk (sparse),batchtopk (dense)"

Every architecture trains `--steps` steps on the same synthetic batches twice: once on JAX's
default backend and once with `JAX_PLATFORMS=cpu` (one fresh process per platform, since
JAX_PLATFORMS takes effect at start-up). Matmuls run at "highest" precision in both (XLA
otherwise uses TF32 for float32 matmuls on recent GPUs), so the final parameters should agree
to float32 rounding amplified by the steps: the script prints each architecture's largest
parameter difference relative to the parameter's scale and flags any above `--tolerance`
(latents unfired for 5 steps count as dead, so the TopK family's AuxK runs too). A
third process trains each in bfloat16 mixed precision on the accelerator and checks that its
losses stay finite. jsae must be installed (`pip install -e .`). Nothing here is timed: speed
is `bench_train.py`'s job.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# The TopK family runs twice: through the (value, index) kernels and through dense matrices.
ARCHS: dict[str, dict] = {
    "standard": {"architecture": "standard", "l1_coefficient": 1.0},
    "gated": {"architecture": "gated", "l1_coefficient": 1.0},
    "jumprelu": {"architecture": "jumprelu", "l0_coefficient": 0.1},
    "topk (sparse)": {"architecture": "topk", "k": 8, "use_sparse_activations": True},
    "topk (dense)": {"architecture": "topk", "k": 8, "use_sparse_activations": False},
    "batchtopk (sparse)": {"architecture": "batchtopk", "k": 8, "use_sparse_activations": True},
    "batchtopk (dense)": {"architecture": "batchtopk", "k": 8, "use_sparse_activations": False},
    "matryoshka (sparse)": {
        "architecture": "matryoshka_batchtopk",
        "k": 8,
        "matryoshka_widths": [64, 256],
        "use_sparse_activations": True,
    },
    "matryoshka (dense)": {
        "architecture": "matryoshka_batchtopk",
        "k": 8,
        "matryoshka_widths": [64, 256],
        "use_sparse_activations": False,
    },
}

WORKER = r"""
import json, sys
import jax
import numpy as np
jax.config.update("jax_default_matmul_precision", sys.argv[3])
import jsae
configs, results = json.loads(sys.argv[1]), {}
for label, config in configs.items():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((config["train_batch_size_tokens"], config["d_in"]),
                                   dtype=np.float32) for _ in range(config.pop("steps"))]
    trainer = jsae.Trainer(config, [])
    losses = [float(trainer.step(x)["losses/overall_loss"]) for x in batches]
    params = {k: np.asarray(v, np.float32) for k, v in trainer.state.params.items()}
    np.savez(f"{sys.argv[2]}/{len(results)}.npz", **params)
    results[label] = losses
print(json.dumps({"platform": jax.devices()[0].platform, "device": jax.devices()[0].device_kind,
                  "losses": results}))
"""


def run(configs: dict[str, dict], out: Path, precision: str, env: dict) -> dict:
    """Train each config in one fresh process (so JAX_PLATFORMS takes effect); the i-th
    config's final params go to `out/i.npz`."""
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(configs), str(out), precision],
        cwd=out,  # the installed jsae, not a checkout's (whose converters/ is not jsae's yet)
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({precision}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--d-in", type=int, default=64)
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    args = parser.parse_args()
    base_env = dict(os.environ)  # jsae must be installed (pip install -e .)
    cpu_env = {**base_env, "JAX_PLATFORMS": "cpu"}
    print(f"command: python benchmarks/device_check.py {' '.join(sys.argv[1:])}")
    labels = args.archs.split(",")
    configs = {
        label: {
            "d_in": args.d_in, "d_sae": args.d_sae, "train_batch_size_tokens": args.batch,
            "training_tokens": args.batch * args.steps, "steps": args.steps, "lr": 1e-3,
            "log_to_wandb": False, "checkpoint_path": None, "output_path": None,
            "progress_bar": False, "dead_feature_window": 5, **ARCHS[label],
        }
        for label in labels
    }  # fmt: skip
    bf16_configs = {label: {**c, "compute_dtype": "bfloat16"} for label, c in configs.items()}
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        acc = run(configs, Path(tmp) / "acc", "highest", base_env)
        cpu = run(configs, Path(tmp) / "cpu", "highest", cpu_env)
        bf16 = run(bf16_configs, Path(tmp) / "bf16", "default", base_env)
        for i, label in enumerate(labels):
            a, c = np.load(Path(tmp) / "acc" / f"{i}.npz"), np.load(Path(tmp) / "cpu" / f"{i}.npz")
            worst = max(
                float(np.max(np.abs(a[k] - c[k])) / (np.max(np.abs(c[k])) + 1e-12)) for k in c.files
            )
            finite = bool(np.all(np.isfinite(bf16["losses"][label])))
            ok = worst <= args.tolerance and finite
            if not ok:
                failures.append(label)
            print(
                f"{label:20s} {acc['platform']} ({acc['device']}) vs cpu: largest relative "
                f"parameter difference {worst:.1e}; final loss {acc['losses'][label][-1]:.4g} vs "
                f"{cpu['losses'][label][-1]:.4g}; bf16 losses finite: {finite} (final "
                f"{bf16['losses'][label][-1]:.4g})  {'ok' if ok else 'MISMATCH'}",
                flush=True,
            )
    if failures:
        sys.exit(f"mismatches: {', '.join(failures)}")


if __name__ == "__main__":
    main()
