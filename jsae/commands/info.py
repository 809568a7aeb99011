"""`jsae info PATH`: print an SAE's config and parameter shapes."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="SAE directory or file, in any format jsae.load detects")


def run(args: argparse.Namespace) -> int:
    import jsae

    sae = jsae.load(args.path)
    print(json.dumps(sae.cfg.to_dict(), indent=2))
    for name, value in sorted(sae.params.items()):
        print(f"{name:16s} {value.dtype!s:9s} {tuple(value.shape)}")
    return 0
