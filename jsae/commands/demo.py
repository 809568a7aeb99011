"""`jsae demo`: the whole pipeline, offline, on an embedded default, in a few minutes on a CPU.

1. make a corpus from a small grammar and train a byte-level BPE tokenizer on it;
2. build a small GPT-2 (Flax, from a config) and train it briefly on the corpus, so its
   activations carry structure; save it as a Hugging Face model directory;
3. write a `jsae train` YAML config naming that model, a hook and the dataset, and run it:
   model -> activation store -> SAE training -> evals with the SAE spliced in -> save;
4. reload the saved SAE with `jsae.load` and check it is the one trained;
5. print a summary table.

Everything is written under `--out` (a temporary directory by default), including the
config, so the same run can be repeated with `jsae train --config <out>/demo.yaml`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="working directory (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (for tests)")
    parser.add_argument("--seed", type=int, default=0, help="seed of corpus, model and SAE")


def _sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "docs": 600,
            "lm_steps": 60,
            "training_tokens": 40_960,
            "eval_batches": 2,
            "d_sae": 128,
        }
    return {
        "docs": 3000,
        "lm_steps": 400,
        "training_tokens": 1_024_000,
        "eval_batches": 8,
        "d_sae": 256,
    }


def train_language_model(
    model: Any, source: Any, steps: int, *, batch: int = 16, lr: float = 3e-3
) -> tuple[Any, float, float]:
    """A few AdamW steps of next-token prediction; returns (params, first loss, last loss)."""
    import jax
    import jax.numpy as jnp
    import optax

    from jsae.evals import per_token_ce

    opt = optax.adamw(optax.cosine_decay_schedule(lr, steps, alpha=0.1), weight_decay=0.01)

    def loss(params, ids):
        return per_token_ce(model.apply(params, ids), ids).mean()

    @jax.jit
    def step(params, state, ids):
        value, grads = jax.value_and_grad(loss)(params, ids)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    params, state = model.params, opt.init(model.params)
    first = last = float("nan")
    for i in range(steps):
        params, state, value = step(params, state, jnp.asarray(source.next_batch(batch)))
        if i == 0:
            first = float(value)
    last = float(value)
    return params, first, last


def demo_config(work: Path, sizes: dict[str, Any], seed: int) -> dict[str, Any]:
    """The `jsae train` configuration the demo runs (SAELens field names)."""
    return {
        # model and data
        "model_name": str(work / "model"),
        "hook_name": "blocks.0.hook_resid_post",
        "dataset_path": str(work / "corpus.jsonl"),
        "streaming": False,
        "context_size": 64,
        "store_batch_size_prompts": 16,
        "n_batches_in_buffer": 8,
        "exclude_special_tokens": True,
        "n_eval_batches": sizes["eval_batches"],
        "eval_batch_size_prompts": 8,
        # SAE
        "architecture": "topk",
        "d_in": 64,
        "d_sae": sizes["d_sae"],
        "k": 8,
        # training
        "lr": 2e-3,
        "train_batch_size_tokens": 512,
        "training_tokens": sizes["training_tokens"],
        "seed": seed,
        "output_path": str(work / "sae"),
        "overwrite_output": True,
        "checkpoint_path": None,
        # logging
        "log_to_wandb": False,
        "progress_bar": False,
    }


def run(args: argparse.Namespace) -> int:
    import datasets
    import numpy as np
    import yaml

    import jsae
    from jsae.activations import TokenSource
    from jsae.activations.pipeline import train_language_model_sae
    from jsae.activations.toy import make_corpus, make_tokenizer, save_text_dataset
    from jsae.models import HookedModel, load_model
    from jsae.training import TrainConfig

    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message=".*starting epoch.*")
    t0 = time.perf_counter()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="jsae-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = _sizes(args.quick)
    timings: dict[str, float] = {}

    # 1. corpus, tokenizer, dataset
    corpus = make_corpus(sizes["docs"], seed=args.seed)
    tokenizer = make_tokenizer(corpus, work / "tokenizer", vocab_size=512)
    save_text_dataset(corpus, work / "corpus.jsonl", fmt="jsonl")

    # 2. a small GPT-2, trained briefly, saved as a Hugging Face model directory
    from transformers import GPT2Config

    t = time.perf_counter()
    config = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_positions=64,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    lm = HookedModel.from_config(config, seed=args.seed, tokenizer=tokenizer)
    lm_source = TokenSource(
        work / "corpus.jsonl",
        tokenizer,
        context_size=64,
        shuffle_seed=args.seed,
        process_index=0,
        process_count=1,
    )
    lm.params, loss_start, loss_end = train_language_model(lm, lm_source, sizes["lm_steps"])
    lm.save_pretrained(work / "model", overwrite=True)
    timings["language model"] = time.perf_counter() - t

    # 3. the jsae train config, run: activations -> SAE -> evals -> save
    settings = demo_config(work, sizes, args.seed)
    (work / "demo.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    t = time.perf_counter()
    train_config = TrainConfig.from_yaml(work / "demo.yaml")
    model = load_model(work / "model")
    sae, results = train_language_model_sae(train_config, model=model, log=None)
    timings["SAE training + evals"] = time.perf_counter() - t

    # 4. reload what was saved
    back = jsae.load(work / "sae")
    same = sae.params.keys() == back.params.keys() and all(
        np.array_equal(np.asarray(sae.params[k]), np.asarray(back.params[k])) for k in sae.params
    )

    # 5. summary
    m = results["metrics"] if results else {}
    perf, behav = (
        m.get("model_performance_preservation", {}),
        m.get("model_behavior_preservation", {}),
    )
    rq, sp = m.get("reconstruction_quality", {}), m.get("sparsity", {})
    rows = [
        (
            "language model",
            f"GPT-2, 2 layers, d_model 64, vocab {len(tokenizer)} (trained "
            f"{sizes['lm_steps']} steps: loss {loss_start:.2f} -> {loss_end:.2f})",
        ),
        ("hook", settings["hook_name"]),
        (
            "SAE",
            f"{back.cfg.architecture}, d_in {back.cfg.d_in}, d_sae {back.cfg.d_sae}, "
            f"k {settings['k']}, {settings['training_tokens']:,} training tokens",
        ),
        (
            "CE loss clean / with SAE / ablated",
            f"{perf.get('ce_loss_without_sae', float('nan')):.4f} / "
            f"{perf.get('ce_loss_with_sae', float('nan')):.4f} / "
            f"{perf.get('ce_loss_with_ablation', float('nan')):.4f}",
        ),
        ("CE loss recovered", f"{perf.get('ce_loss_score', float('nan')):.4f}"),
        (
            "KL with SAE / score",
            f"{behav.get('kl_div_with_sae', float('nan')):.4f} / "
            f"{behav.get('kl_div_score', float('nan')):.4f}",
        ),
        (
            "explained variance (legacy)",
            f"{rq.get('explained_variance', float('nan')):.4f} "
            f"({rq.get('explained_variance_legacy', float('nan')):.4f})",
        ),
        ("L0 / dead latents", f"{sp.get('l0', float('nan')):.1f} / {sp.get('dead_features', '?')}"),
        ("saved to", str(work / "sae")),
        ("reloaded with jsae.load", "identical" if same else "DIFFERENT"),
        ("config", f"{work / 'demo.yaml'} (rerun: jsae train --config {work / 'demo.yaml'})"),
        *[(f"time: {k}", f"{v:.1f} s") for k, v in timings.items()],
        ("wall time", f"{time.perf_counter() - t0:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0 if same and results is not None else 1
