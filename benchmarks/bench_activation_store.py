"""Training batches from a language model: jsae's ActivationStore vs SAELens's ActivationsStore.

    python benchmarks/bench_activation_store.py [--rounds 2] [--batches 32]

Both sides read the same text dataset (tokenized and packed the same way), run the same
GPT-2-small-shaped random weights (written by PyTorch, loaded by jsae from safetensors) to
blocks.2.hook_resid_post with context 128 and 8 contexts per forward, shuffle through a
mixing buffer of the same token capacity, and deliver batches of 1024 activations. Measured:
steady-state training tokens per second once the buffer is full, for SAELens, jsae, and jsae
without its background reader (prefetch=0), in alternating rounds so all see the same
machine load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ReferenceWorker, machine

import jsae
from jsae.activations import TokenSource
from jsae.activations.store import ActivationStore
from jsae.activations.toy import make_corpus, make_tokenizer, save_text_dataset

SETTINGS = {
    "hook_name": "blocks.2.hook_resid_post",
    "context_size": 128,
    "store_batch_size_prompts": 8,
    "n_batches_in_buffer": 16,
    "batch_size": 1024,
}


def jsae_store(model, corpus: Path, tokenizer, prefetch: int) -> ActivationStore:
    source = TokenSource(
        corpus, tokenizer, context_size=SETTINGS["context_size"], process_index=0, process_count=1
    )
    store = ActivationStore(
        model,
        source,
        hook_names=SETTINGS["hook_name"],
        batch_size=SETTINGS["batch_size"],
        store_batch_size_prompts=SETTINGS["store_batch_size_prompts"],
        n_batches_in_buffer=SETTINGS["n_batches_in_buffer"],
        prefetch=prefetch,
    )
    next(store).block_until_ready()  # fills the buffer (and compiles)
    return store


def timed(store: ActivationStore, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        x = next(store)
    x.block_until_ready()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--batches", type=int, default=32, help="training batches per round")
    args = parser.parse_args()
    buffer_tokens = (
        SETTINGS["n_batches_in_buffer"]
        * SETTINGS["store_batch_size_prompts"]
        * SETTINGS["context_size"]
    )
    min_batches = 2 * buffer_tokens // SETTINGS["batch_size"]
    if args.batches < min_batches:
        # fewer batches than two buffer refills would time a pre-filled buffer, not the model
        parser.error(
            f"--batches must be at least {min_batches} (two refills of each store's buffer)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = make_corpus(3000, seed=0)
        tokenizer = make_tokenizer(texts, tmp / "tok")
        corpus = save_text_dataset(texts, tmp / "corpus.jsonl", fmt="jsonl")
        (tmp / "settings.json").write_text(json.dumps(SETTINGS))
        worker = ReferenceWorker(
            "bench_activation_store_saelens.py",
            tmp / "model",
            tmp / "tok",
            corpus,
            tmp / "settings.json",
        )
        model = jsae.load_model(tmp / "model")
        stores = {
            "jsae": jsae_store(model, corpus, tokenizer, prefetch=2),
            "jsae, prefetch=0": jsae_store(model, corpus, tokenizer, prefetch=0),
        }
        seconds: dict[str, list[float]] = {"SAELens": [], **{k: [] for k in stores}}
        for _ in range(args.rounds):
            seconds["SAELens"].append(worker.request(batches=args.batches)["seconds"])
            for name, store in stores.items():
                seconds[name].append(timed(store, args.batches))
        worker.close()
        for store in stores.values():
            store.close()

    tokens = args.batches * SETTINGS["batch_size"]
    ref = tokens / statistics.median(seconds["SAELens"])
    info = worker.info
    print(f"machine: {machine()}; reference: torch {info['torch']} ({info['threads']} threads)")
    print(
        f"config: GPT-2 small shape, random weights, {SETTINGS['hook_name']}, context "
        f"{SETTINGS['context_size']}, {SETTINGS['store_batch_size_prompts']} contexts per "
        f"forward, buffer of {SETTINGS['n_batches_in_buffer']} forwards, batches of "
        f"{SETTINGS['batch_size']}, float32, text dataset tokenized on the fly"
    )
    print(f"timing: median of {args.rounds} alternating rounds of {args.batches} batches")
    print(f"{'store':20s} {'tokens/s':>9s} {'vs SAELens':>10s}")
    for name, values in seconds.items():
        rate = tokens / statistics.median(values)
        print(f"{name:20s} {rate:9.0f} {rate / ref:9.2f}x")


if __name__ == "__main__":
    main()
