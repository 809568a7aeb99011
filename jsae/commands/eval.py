"""`jsae eval`: evaluate an SAE with SAELens's metrics, the SAE spliced into its model.

    jsae eval path/to/sae dataset_path=NeelNanda/pile-10k --batch-size-prompts 8
    jsae eval gpt2-small-res-jb --sae-id blocks.8.hook_resid_pre dataset_path=NeelNanda/pile-10k

The model, hook and context come from the SAE's metadata unless set (`model_name=...`,
`hook_name=...`, `context_size=...`). Prints the metrics by group and, with `--output`, writes
them as JSON in the layout of SAELens's eval results (`metrics`, `feature_metrics`,
`sae_cfg`, `eval_cfg`).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sae",
        help="SAE directory or file (any format jsae.load reads), or a "
        "registry release / hub repo with --sae-id",
    )
    parser.add_argument(
        "--sae-id", default=None, help="load SAE_ID of release SAE with jsae.from_pretrained"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="model/data settings (dataset_path=..., model_name=...)",
    )
    parser.add_argument("--config", help="YAML file of model/data settings")
    parser.add_argument("--batch-size-prompts", type=int, default=8, help="contexts per batch")
    parser.add_argument(
        "--n-eval-reconstruction-batches",
        type=int,
        default=10,
        help="batches for CE loss and KL with the SAE spliced in",
    )
    parser.add_argument(
        "--n-eval-sparsity-variance-batches",
        type=int,
        default=1,
        help="batches for reconstruction and sparsity metrics",
    )
    parser.add_argument(
        "--no-downstream",
        action="store_true",
        help="skip the CE/KL metrics (no spliced forward passes)",
    )
    parser.add_argument(
        "--include-special-tokens", action="store_true", help="evaluate on BOS/EOS/PAD tokens too"
    )
    parser.add_argument(
        "--activation-scale",
        type=float,
        default=None,
        help="scale activations into the SAE (unfolded expected_average_only_in)",
    )
    parser.add_argument("--output", help="write the results to this JSON file")
    parser.add_argument(
        "--features", action="store_true", help="also print per-latent summary statistics"
    )


def _defaults_from_sae(sae) -> dict:
    meta = sae.cfg.metadata
    out = {}
    for key in (
        "model_name",
        "hook_name",  # (its head indices apply in run_evals where the hooks are the SAE's)
        "hook_name_out",
        "context_size",
        "prepend_bos",
        "dataset_path",
        "sequence_separator_token",
        "disable_concat_sequences",
    ):
        value = meta.get(key)
        if value is not None:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    import json
    import math

    import jsae
    from jsae import evals
    from jsae.activations.config import settings_from_sources
    from jsae.activations.pipeline import eval_hooks, load_model_for, token_source
    from jsae.fsutil import atomic_write_bytes

    sae = jsae.from_pretrained(args.sae, args.sae_id) if args.sae_id else jsae.load(args.sae)
    settings = settings_from_sources(args.config, args.overrides, defaults=_defaults_from_sae(sae))
    settings.require("model_name", "hook_name", "dataset_path")
    model = load_model_for(settings)
    tokens = token_source(settings, model.tokenizer, shuffle_seed=42)
    cfg = evals.EvalConfig.everything(
        batch_size_prompts=args.batch_size_prompts,
        n_eval_reconstruction_batches=args.n_eval_reconstruction_batches,
        n_eval_sparsity_variance_batches=args.n_eval_sparsity_variance_batches,
        compute_kl=not args.no_downstream,
        compute_ce_loss=not args.no_downstream,
    )
    metrics, features = evals.run_evals(
        sae,
        model,
        tokens,
        cfg,
        exclude_special_tokens=not args.include_special_tokens,
        activation_scale=args.activation_scale,
        **eval_hooks(settings, sae),
    )
    print(evals.format_metrics(metrics))
    if args.features:
        for key, values in features.items():
            finite = [v for v in values if not math.isnan(v)]
            if finite:
                print(
                    f"{key:<36} mean {sum(finite) / len(finite):.4g}  "
                    f"min {min(finite):.4g}  max {max(finite):.4g}"
                )
    if args.output:
        result = {
            "metrics": metrics,
            "feature_metrics": features,
            "sae_cfg": sae.cfg.to_dict(),
            "eval_cfg": {
                **cfg.to_dict(),
                "dataset": settings.dataset_path,
                "context_size": settings.context_size,
            },
        }
        atomic_write_bytes(args.output, json.dumps(evals.nan_to_none(result), indent=2).encode())
        print(f"results written to {args.output}")
    return 0
