"""Step rate over a training run: jsae against SAELens's trainer, same start, same batches.

    python benchmarks/bench_train_run.py       # needs JSAE_REFERENCE_PYTHON; 12-23 min on 2 cores
    python benchmarks/bench_train_run.py --steps 60 --chunk 20

`bench_train.py` times single steps at fixed sparsity. A run changes sparsity as it trains: a
standard SAE starts with half its latents firing, and the L1 penalty brings L0 down over the
first steps. SAELens's step is dense at every L0; jsae's switches to the active (token, latent)
pairs once they fit (`jsae.architectures.relu_pairs`). This benchmark trains both from the very
same initial weights (SAELens's, seeded) on the very same batches, standard SAE, d_in 768,
d_sae 16384, batch 4096, fp32, and reports the step rates chunk by chunk and over the run, with
each side's L0 and explained variance, so that both can be seen to train alike.

The batches come from jsae's synthetic source (16384 independent true features in superposition,
`mean_active` per token), scaled so the mean token norm is sqrt(d_in), and are written once to
an .npy file that both sides memory-map. Chunks alternate between the sides (SAELens, then jsae)
so both see the same machine load. The first step of each side is reported apart: jsae's
includes XLA's compilation. At the end, each side's decoder is scored against the true
features (`feature_recovery`, mean max cosine).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ReferenceWorker, machine

import jsae
from jsae.activations.synthetic import SyntheticActivations, SyntheticConfig, feature_recovery
from jsae.architectures.relu_pairs import pair_capacity

D_IN, D_SAE, BATCH = 768, 16384, 4096


def write_batches(path: Path, steps: int, n_features: int, mean_active: float) -> np.ndarray:
    """`steps` synthetic batches, scaled to mean token norm sqrt(d_in), into an .npy file.

    Returns the true features [n_features, d_in]."""
    source = SyntheticActivations(
        SyntheticConfig(d_in=D_IN, n_features=n_features, mean_active=mean_active, seed=0),
        batch_size=BATCH,
    )
    stream = iter(source)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(steps, BATCH, D_IN))
    scale = None
    for i in range(steps):
        x = np.asarray(next(stream), np.float32)  # [B, d_in]
        if scale is None:
            scale = math.sqrt(D_IN) / float(np.linalg.norm(x, axis=-1).mean())
        out[i] = x * scale
    out.flush()
    del out
    return np.asarray(source.features)


def jsae_trainer(settings: dict, init_file: Path) -> jsae.Trainer:
    config = {
        "architecture": "standard", **{k: settings[k] for k in (
            "d_in", "d_sae", "l1_coefficient", "l1_warm_up_steps", "lr", "seed",
            "train_batch_size_tokens")},
        "lr_end": settings["lr"] / 10, "training_tokens": BATCH * settings["steps"],
        "log_to_wandb": False, "checkpoint_path": None, "output_path": None,
        "progress_bar": False,
    }  # fmt: skip
    tc = jsae.TrainConfig.from_dict(config)
    init = jsae.SAE.from_params(tc.sae.sae_config(), load_file(init_file))
    return jsae.Trainer(tc, [], init=init)


def jsae_chunk(trainer: jsae.Trainer, batches: np.ndarray, start: int, stop: int) -> dict:
    """Train on batches start..stop-1, timing each step alone (batch read before, metrics
    fetched after)."""
    reply = {"times": [], "l0": [], "explained_variance": []}
    for i in range(start, stop):
        x = np.array(batches[i])
        t0 = time.perf_counter()
        metrics = trainer.step(x)
        jax.block_until_ready((trainer.state.params, metrics))
        reply["times"].append(time.perf_counter() - t0)
        reply["l0"].append(float(metrics["metrics/l0"]))
        reply["explained_variance"].append(float(metrics["metrics/explained_variance"]))
    return reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--chunk", type=int, default=25, help="steps per side before switching")
    # the defaults are SAELens's (StandardTrainingSAEConfig, LanguageModelSAERunnerConfig)
    parser.add_argument("--l1", type=float, default=1.0, help="l1_coefficient")
    parser.add_argument("--l1-warm-up", type=int, default=0, help="l1_warm_up_steps")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--n-features", type=int, default=16384)
    parser.add_argument("--mean-active", type=float, default=20.0)
    args = parser.parse_args()
    settings = {
        "d_in": D_IN, "d_sae": D_SAE, "train_batch_size_tokens": BATCH, "steps": args.steps,
        "l1_coefficient": args.l1, "lr": args.lr, "seed": 0,
        "l1_warm_up_steps": args.l1_warm_up,
    }  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        features = write_batches(tmp / "batches.npy", args.steps, args.n_features, args.mean_active)
        print(f"wrote {args.steps} batches in {time.perf_counter() - t0:.0f} s", flush=True)
        (tmp / "settings.json").write_text(json.dumps(settings))
        worker = ReferenceWorker(
            "saelens_train_run.py", tmp / "batches.npy", tmp / "init.safetensors",
            tmp / "settings.json",
        )  # fmt: skip
        batches = np.load(tmp / "batches.npy", mmap_mode="r")
        trainer = jsae_trainer(settings, tmp / "init.safetensors")
        runs: dict[str, dict[str, list]] = {
            side: {"times": [], "l0": [], "explained_variance": []} for side in ("ref", "jsae")
        }
        for start in range(0, args.steps, args.chunk):
            stop = min(start + args.chunk, args.steps)
            for side, reply in (
                ("ref", worker.request(start=start, stop=stop)),
                ("jsae", jsae_chunk(trainer, batches, start, stop)),
            ):
                for key, values in reply.items():
                    runs[side][key] += values
            ref, ours = runs["ref"], runs["jsae"]
            print(
                f"steps {start:4d}-{stop - 1:4d}: SAELens {np.mean(ref['times'][start:stop]):.2f} "
                f"s/step (L0 {ref['l0'][stop - 1]:.0f}), jsae "
                f"{np.mean(ours['times'][start:stop]):.2f} s/step (L0 {ours['l0'][stop - 1]:.0f})",
                flush=True,
            )
        worker.request(save=str(tmp / "ref_W_dec.npy"))
        ref_W_dec = np.load(tmp / "ref_W_dec.npy")
        worker.close()
    report(args, settings, runs, worker.info, features, ref_W_dec, np.asarray(trainer.sae.W_dec))


def report(args, settings, runs, info, features, ref_W_dec, W_dec) -> None:
    ref, ours = runs["ref"], runs["jsae"]
    print(
        f"\nmachine: {machine()}; reference: SAELens SAETrainer.step, torch {info['torch']} "
        f"({info['threads']} threads)"
    )
    print(
        f"config: standard d_in={D_IN} d_sae={D_SAE} batch={BATCH} float32, "
        f"l1_coefficient {settings['l1_coefficient']} (warm-up {settings['l1_warm_up_steps']} "
        f"steps), lr {settings['lr']}, {args.steps} steps; synthetic source with "
        f"{args.n_features} independent features, mean_active {args.mean_active}"
    )
    print(
        f"first step: SAELens {ref['times'][0]:.2f} s, jsae {ours['times'][0]:.2f} s "
        "(includes compilation); not in the rates below"
    )
    edges = sorted({1, *(e for e in (10, 25, 50, 100, 200) if e < args.steps), args.steps})
    print(f"{'steps':>11s} {'SAELens s/step':>15s} {'jsae s/step':>12s} {'ratio':>6s} "
          f"{'L0 SAELens':>11s} {'L0 jsae':>8s} {'EV SAELens':>11s} {'EV jsae':>8s}")  # fmt: skip
    for a, b in itertools.pairwise(edges):
        tr, tj = np.mean(ref["times"][a:b]), np.mean(ours["times"][a:b])
        print(
            f"{a:4d}-{b - 1:<6d} {tr:15.3f} {tj:12.3f} {tr / tj:5.2f}x "
            f"{np.mean(ref['l0'][a:b]):11.0f} {np.mean(ours['l0'][a:b]):8.0f} "
            f"{np.mean(ref['explained_variance'][a:b]):11.3f} "
            f"{np.mean(ours['explained_variance'][a:b]):8.3f}"
        )
    total_ref, total_ours = sum(ref["times"][1:]), sum(ours["times"][1:])
    print(
        f"whole run (steps 1-{args.steps - 1}): SAELens {total_ref:.0f} s, "
        f"jsae {total_ours:.0f} s: jsae's step rate is {total_ref / total_ours:.2f}x SAELens's"
    )
    capacity = pair_capacity(BATCH, D_SAE) / BATCH  # L0 above it: the dense branch
    dense = sum(1 for l0 in ours["l0"] if l0 > capacity)
    print(
        f"jsae steps on the dense branch (L0 above the active-pair capacity, "
        f"{capacity:.0f}): {dense}"
    )
    print(
        "true-feature recovery (mean max cosine): "
        f"SAELens {feature_recovery(features, ref_W_dec):.3f}, "
        f"jsae {feature_recovery(features, W_dec):.3f}"
    )


if __name__ == "__main__":
    main()
