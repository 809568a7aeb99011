"""`jsae cache`: run a model over a dataset and write its activations to disk, resumably.

    jsae cache --out cache/ --n-tokens 10000000 model_name=gpt2 \
        hook_name=blocks.8.hook_resid_pre dataset_path=monology/pile-uncopyrighted

Settings are `LanguageModelSettings` fields, from `--config` (YAML; a `jsae train` config
works) and `key=value` overrides. Rerunning an interrupted command continues after the last
complete shard; train on the result with `use_cached_activations: true` and
`cached_activations_path: cache/`. The format is described in docs/pipeline.md.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings to set")
    parser.add_argument("--config", help="YAML file of settings (model_name, hook_name, ...)")
    parser.add_argument("--out", required=True, help="cache directory (created, or resumed)")
    parser.add_argument(
        "--n-tokens", type=int, required=True, help="tokens to cache (rounded up to model batches)"
    )
    parser.add_argument(
        "--shard-tokens",
        type=int,
        default=1 << 20,
        help="tokens per shard file, rounded up to whole model batches (default 2^20)",
    )
    parser.add_argument(
        "--hook",
        action="append",
        default=None,
        help="hook to cache (repeat for several; default: hook_name)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing activation cache (only a cache), once the new one is complete",
    )


def run(args: argparse.Namespace) -> int:
    from jsae.activations.config import settings_from_sources
    from jsae.activations.pipeline import cache_activations

    settings = settings_from_sources(args.config, args.overrides)
    settings.require("model_name", "dataset_path")
    if args.hook and settings.hook_name and settings.hook_name not in args.hook:
        print(
            f"jsae cache: caching the --hook hooks {args.hook}; hook_name={settings.hook_name} "
            "(from the settings) is not among them: add --hook for it to cache it too.",
            file=sys.stderr,
        )
    cache_activations(
        settings,
        args.out,
        n_tokens=args.n_tokens,
        shard_tokens=args.shard_tokens,
        hook_names=args.hook,
        overwrite=args.overwrite,
    )
    print(f"activations cached in {args.out}")
    return 0
