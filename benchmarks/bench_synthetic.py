"""Host time per batch of the synthetic activation source, against a dense draw of the same model.

    python benchmarks/bench_synthetic.py [--reps 3] [--n-features 16384] [--mean-active 3,20]

`SyntheticActivations` samples sparsely: which features fire as (row, feature) pairs, one
magnitude per firing, and `x = acts @ features` as a sparse sum. The reference, timed in the
same run, is the direct dense formulation of the same model: a `[B, n_features]` firing draw
(uniforms against each feature's probability, or the copula's Gaussians), a dense magnitude
draw, and the dense float64 matmul. Both give the same distribution; only the cost differs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, time_it

from jsae.activations.synthetic import STRUCTURES, SyntheticActivations, SyntheticConfig


def dense_batch(source: SyntheticActivations, rng: np.random.Generator, n: int) -> np.ndarray:
    """One [n, d_in] batch drawn densely (the reference formulation). [n, d_in] float32"""
    c = source.config
    if c.structure == "correlated":
        common = rng.standard_normal((n, c.correlation_rank)) @ source._copula.factor.T
        own = rng.standard_normal((n, c.n_features))
        z = math.sqrt(c.correlation) * common + math.sqrt(1 - c.correlation) * own
        fire = z < source._copula.cutoffs
    elif c.structure == "independent":
        fire = rng.random((n, c.n_features)) < source.probabilities
    else:  # hierarchical: parents dense, each firing parent's child set in place
        fire = np.zeros((n, c.n_features), bool)
        fire[:, : c.n_parents] = rng.random((n, c.n_parents)) < source.probabilities[: c.n_parents]
        pick = rng.integers(0, 1 << 30, (n, c.n_parents))
        child = rng.random((n, c.n_parents)) < c.child_probability
        for parent in range(c.n_parents):
            kids = np.arange(c.n_parents + parent, c.n_features, c.n_parents)
            rows = np.nonzero(fire[:, parent] & child[:, parent])[0]
            fire[rows, kids[pick[rows, parent] % len(kids)]] = True
    magnitudes = np.abs(1.0 + c.magnitude_std * rng.standard_normal(fire.shape))
    return (np.where(fire, magnitudes, 0.0) @ source.features).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--n-features", type=int, default=16384)
    ap.add_argument("--mean-active", default="3,20")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/bench_synthetic.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"batch {args.batch} x d_in {args.d_in}, {args.n_features} features, float32 output:")
    for structure in STRUCTURES:
        for mean_active in (float(m) for m in args.mean_active.split(",")):
            config = SyntheticConfig(
                d_in=args.d_in,
                n_features=args.n_features,
                structure=structure,
                mean_active=mean_active,
            )
            source = SyntheticActivations(config, batch_size=args.batch)
            stream = iter(source)
            rng = np.random.default_rng(0)
            ours = time_it(lambda: next(stream), reps=args.reps)  # noqa: B023
            dense = time_it(lambda: dense_batch(source, rng, args.batch), reps=args.reps)  # noqa: B023
            print(
                f"  {structure:12s} mean_active {mean_active:5.1f}: jsae {ours:6.3f} s, "
                f"dense draw {dense:6.3f} s -> {dense / ours:5.1f}x"
            )


if __name__ == "__main__":
    main()
