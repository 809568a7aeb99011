"""Forward (encode+decode) throughput of a Gemma-Scope-sized JumpReLU SAE: jsae vs SAELens.

    python benchmarks/bench_inference.py [--reps 5]

Config: d_in 2304, d_sae 16384, batch 4096 tokens, float32, CPU. Thresholds are set so that
about 70 latents fire per token (Gemma Scope 16k SAEs have L0 ~ 20-150), and both libraries
read the same SAELens-format file and the same inputs; each computes `sae(x)`, i.e.
decode(encode(x)). Prints tokens/s for jsae (sparse decode, the default, and the dense
matmul), SAELens, their ratio, and the largest output difference (both compute the same
function). The two sides alternate in rounds so both see the same machine load, and the
machine's own GEMM speed for the encoder matmul is measured in both libraries.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ReferenceWorker, machine, time_each

import jsae

D_IN, D_SAE, BATCH, TARGET_L0 = 2304, 16384, 4096, 70


def build_sae(rng: np.random.Generator) -> jsae.SAE:
    cfg = jsae.SAEConfig(architecture="jumprelu", d_in=D_IN, d_sae=D_SAE)
    # Unit-variance pre-activations for unit-variance inputs; the threshold at the quantile
    # that leaves TARGET_L0 of D_SAE latents firing per token.
    W_enc = rng.standard_normal((D_IN, D_SAE), dtype=np.float32) / np.sqrt(D_IN)
    threshold = np.float32(np.sqrt(2) * _erfinv(1 - 2 * TARGET_L0 / D_SAE))
    params = {
        "W_enc": W_enc,
        "b_enc": rng.normal(0, 0.05, D_SAE).astype(np.float32),
        "W_dec": (rng.standard_normal((D_SAE, D_IN), dtype=np.float32) / np.sqrt(D_IN)),
        "b_dec": rng.normal(0, 0.05, D_IN).astype(np.float32),
        "threshold": np.full(D_SAE, threshold, np.float32),
    }
    return jsae.SAE.from_params(cfg, params)


def _erfinv(y: float) -> float:
    from scipy.special import erfinv

    return float(erfinv(y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (reference, then jsae)")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per round and side")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    sae = build_sae(rng)
    x = rng.standard_normal((BATCH, D_IN), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sae.save(tmp / "sae")
        save_file({"x": x}, tmp / "x.safetensors")
        worker = ReferenceWorker(
            "saelens_inference.py", tmp / "sae", tmp / "x.safetensors", tmp / "ref.safetensors"
        )
        ref_out = load_file(tmp / "ref.safetensors")["out"]
        loaded = jsae.load(tmp / "sae")

        x_dev = jax.device_put(x)
        sparse_fn = jax.jit(lambda s, x: s(x))
        dense_fn = jax.jit(lambda s, x: s(x, sparse=False))
        gemm_fn = jax.jit(lambda s, x: x @ s.W_enc)
        times = {"ref": [], "sparse": [], "dense": [], "ref_gemm": [], "gemm": []}
        for _ in range(args.rounds):  # alternate so every side sees the same machine load
            times["ref_gemm"] += worker.request(reps=args.reps, gemm=True)["times"]
            times["gemm"] += time_each(
                lambda: gemm_fn(loaded, x_dev).block_until_ready(), reps=args.reps
            )
            times["ref"] += worker.request(reps=args.reps)["times"]
            times["sparse"] += time_each(
                lambda: sparse_fn(loaded, x_dev).block_until_ready(), reps=args.reps
            )
            times["dense"] += time_each(
                lambda: dense_fn(loaded, x_dev).block_until_ready(), reps=args.reps
            )
        worker.close()
    out = np.asarray(sparse_fn(loaded, x_dev))
    l0 = float((np.asarray(jax.jit(lambda s, x: s.encode(x))(loaded, x_dev)) > 0).sum(-1).mean())

    med = {k: statistics.median(v) for k, v in times.items()}
    info = worker.info
    print(
        f"machine: {machine()}; reference: torch {info['torch']} "
        f"({info['threads']} threads), {info['saelens_class']}"
    )
    print(f"config: jumprelu d_in={D_IN} d_sae={D_SAE} batch={BATCH} float32, mean L0 {l0:.1f}")
    print(f"timing: median of {args.rounds} alternating rounds x {args.reps} calls per side")
    print(f"{'implementation':32s} {'s/batch':>8s} {'tokens/s':>10s} {'vs SAELens':>10s}")
    rows = [
        ("SAELens 6.x (torch)", med["ref"]),
        ("jsae (sparse decode, default)", med["sparse"]),
        ("jsae (dense decode)", med["dense"]),
    ]
    for name, t in rows:
        print(f"{name:32s} {t:8.3f} {BATCH / t:10.0f} {med['ref'] / t:9.2f}x")
    print(f"max |jsae - SAELens| output difference: {float(np.abs(out - ref_out).max()):.2e}")
    gflop = 2 * BATCH * D_IN * D_SAE / 1e9
    t_torch, t_xla = med["ref_gemm"], med["gemm"]
    print(
        f"encoder GEMM [{BATCH}x{D_IN}]@[{D_IN}x{D_SAE}], {gflop:.0f} GFLOP: "
        f"torch {t_torch:.3f} s ({gflop / t_torch:.0f} GFLOP/s), "
        f"XLA {t_xla:.3f} s ({gflop / t_xla:.0f} GFLOP/s); "
        f"XLA/torch GEMM speed {t_torch / t_xla:.2f}x"
    )


if __name__ == "__main__":
    main()
