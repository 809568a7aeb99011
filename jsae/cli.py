"""`jsae` command line: `jsae <command> --help` for each.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
this file only maps names to modules. Command modules keep heavy imports inside `run`, so
`jsae --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from jsae.errors import JsaeError

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "info": ("jsae.commands.info", "show an SAE's config and parameter shapes"),
    "demo": ("jsae.commands.demo", "offline end-to-end run on an embedded default"),
    "eval": ("jsae.commands.eval", "evaluate an SAE spliced into its model (SAELens metrics)"),
    "cache": ("jsae.commands.cache", "write a model's activations to disk, resumably"),
    "convert": ("jsae.commands.convert", "convert any supported SAE checkpoint to SAELens format"),
    "train": ("jsae.commands.train", "train an SAE from a YAML config and key=value overrides"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jsae", description="Sparse autoencoders on language-model activations, in JAX."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line read as messages, not as a source location."""
    return f"jsae: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list):
        # argparse takes `key=value` positionals only before the first option; later ones are
        # overrides too (`jsae eval SAE --config c.yaml dataset_path=...`)
        args.overrides += [item for item in extra if "=" in item and not item.startswith("-")]
        extra = [item for item in extra if "=" not in item or item.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    warnings.formatwarning = _one_line_warning
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (JsaeError, FileNotFoundError, FileExistsError) as exc:
        print(f"jsae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: one line, not a traceback
        print(f"jsae {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 143 if "SIGTERM" in str(exc) else 130


if __name__ == "__main__":
    sys.exit(main())
