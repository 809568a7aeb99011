"""Activation generation from a GPT-2-small-shaped model: jsae vs TransformerLens, same run.

    python benchmarks/bench_activations.py [--rounds 2] [--reps 2] [--batch 8]

Both sides run the same random weights (written once by PyTorch, loaded by jsae from
safetensors) on the same tokens, context 128, float32. Measured: reading
blocks.2.hook_resid_post and blocks.11.hook_resid_post (jsae stops the forward after the hook;
TransformerLens's run_with_cache with stop_at_layer=L+1, as SAELens's ActivationsStore calls
it), and the full forward to logits. Rounds alternate between the two sides so both see the
same machine load. Prints tokens/s, the jsae/TransformerLens ratio, the machine, and the
largest activation difference (both compute the same function).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ReferenceWorker, machine, time_each

import jsae

CONTEXT, VOCAB = 128, 50257
MODES = ("blocks.2.hook_resid_post", "blocks.11.hook_resid_post", "full")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds (reference, then jsae)")
    parser.add_argument("--reps", type=int, default=2, help="timed calls per round and side")
    parser.add_argument("--batch", type=int, default=8, help="sequences per forward")
    args = parser.parse_args()

    tokens = np.random.default_rng(0).integers(0, VOCAB, (args.batch, CONTEXT), dtype=np.int32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "tokens.npy", tokens)
        worker = ReferenceWorker(
            "bench_activations_transformerlens.py",
            tmp / "model",
            tmp / "tokens.npy",
            tmp / "ref.npz",
        )
        with np.load(tmp / "ref.npz") as ref:
            reference = dict(ref)
        model = jsae.load_model(tmp / "model")

    ids = jax.device_put(tokens)
    fns = {
        mode: jax.jit(lambda p, x, mode=mode: model.apply_with_cache(p, x, [mode])[1][mode])
        for mode in MODES[:2]
    }
    fns["full"] = jax.jit(model.apply)
    outputs = {mode: np.asarray(fns[mode](model.params, ids)) for mode in MODES[:2]}
    gap = max(float(np.abs(outputs[m] - reference[m]).max()) for m in MODES[:2])

    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):  # alternate so both sides see the same machine load
        for mode in MODES:
            times.setdefault(("tl", mode), []).extend(
                worker.request(mode=mode, reps=args.reps)["times"]
            )
            fn = fns[mode]
            times.setdefault(("jsae", mode), []).extend(
                time_each(lambda fn=fn: fn(model.params, ids).block_until_ready(), reps=args.reps)
            )
    worker.close()

    n_tokens = args.batch * CONTEXT
    info = worker.info
    print(f"machine: {machine()}; reference: torch {info['torch']} ({info['threads']} threads)")
    print(
        f"config: GPT-2 small shape (12 layers, d_model 768, vocab {VOCAB}), random weights, "
        f"batch {args.batch} x context {CONTEXT}, float32"
    )
    print(f"timing: median of {args.rounds} alternating rounds x {args.reps} calls per side")
    print(f"{'what':28s} {'TL tok/s':>9s} {'jsae tok/s':>10s} {'jsae/TL':>8s}")
    for mode in MODES:
        tl_s = statistics.median(times[("tl", mode)])
        js_s = statistics.median(times[("jsae", mode)])
        label = "full forward (logits)" if mode == "full" else mode
        print(f"{label:28s} {n_tokens / tl_s:9.0f} {n_tokens / js_s:10.0f} {tl_s / js_s:7.2f}x")
    print(f"max |jsae - TransformerLens| activation difference: {gap:.2e}")


if __name__ == "__main__":
    main()
