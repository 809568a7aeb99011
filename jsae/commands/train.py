"""`jsae train --config run.yaml key=value ...`: train an SAE from a config file and overrides.

    jsae train --config run.yaml lr=1e-4 mesh='{data: 2, model: 4}'
    jsae train --config run.yaml --resume          # continue from the newest checkpoint
    jsae train --config run.yaml --auto-resume     # continue if there is a checkpoint, else start
    jsae train --list-options                      # every option, its default and what it does

Keys are SAELens's flat field names (`training.lr` also works); values are parsed as YAML. The
activations come from the configured `activation_source` ("synthetic" or "npy" built in); with
`model_name` (or `use_cached_activations`) set they come from the language model (or a
`jsae cache` directory), and the run evaluates the SAE spliced into the model (docs/pipeline.md).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="YAML (or JSON) config file")
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        metavar="key=value",
        help="config overrides, values parsed as YAML (flags may follow them)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="resume from the newest checkpoint in checkpoint_path"
    )
    parser.add_argument(
        "--auto-resume",
        action="store_true",
        help="resume from checkpoint_path if it holds a checkpoint, else start a new run "
        "(for jobs that are restarted, e.g. on preemptible machines)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output_path at the end"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    parser.add_argument(
        "--list-options", action="store_true", help="list every option with its default and exit"
    )
    parser.set_defaults(_train_parser=parser)  # for --help written after the overrides


def run(args: argparse.Namespace) -> int:
    from jsae.errors import ConfigError
    from jsae.training.config import MODEL_SOURCES, TrainConfig, option_help

    _take_trailing_flags(args)

    if args.list_options:
        section = None
        for concern, key, default, text in option_help():
            if concern != section:
                print(f"\n[{concern}]")
                section = concern
            print(f"  {key} = {default!r}\n      {text}")
        return 0
    if args.config is None and not args.overrides:
        raise ConfigError("give a config file (--config run.yaml) and/or key=value overrides.")
    overrides = list(args.overrides)
    if args.resume and args.auto_resume:
        raise ConfigError("give --resume or --auto-resume, not both.")
    if args.auto_resume:
        overrides.append("resume_from_checkpoint=auto")
    if args.overwrite:
        overrides.append("overwrite_output=true")
    config = (  # the file and the overrides are validated together
        TrainConfig.from_yaml(args.config, overrides) if args.config else _from_overrides(overrides)
    )
    if args.resume:  # the newest checkpoint in the run's checkpoint_path
        if config.training.checkpoint_path is None:
            raise ConfigError(
                "--resume continues from checkpoint_path, which is null; set checkpoint_path to "
                "the run's checkpoint directory (or resume_from_checkpoint=DIR)."
            )
        config = config.replace(resume_from_checkpoint=config.training.checkpoint_path)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0

    if config.data.activation_source in MODEL_SOURCES:  # model -> activations -> evals
        from jsae.activations.pipeline import train_language_model_sae

        train_language_model_sae(config)
        return 0

    from jsae.training import Trainer

    trainer = Trainer(config)
    try:
        sae = trainer.fit()
    finally:
        trainer.close()  # the checkpoint manager's threads, before the interpreter exits
    out = config.training.output_path
    trained = config.sae.architecture
    if trained != sae.cfg.architecture:  # BatchTopK is saved as JumpReLU
        trained += f" (saved as {sae.cfg.architecture})"
    print(
        f"trained {trained} SAE (d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae}) for "
        f"{trainer.steps_done} steps / {trainer.n_training_samples} tokens"
        + (f"; saved to {out}" if out else ""),
        file=sys.stderr,
    )
    return 0


def _from_overrides(overrides: list[str]):
    """A config from overrides alone (checked as overrides of a file would be)."""
    from jsae.training.config import TrainConfig, _with_raw_overrides, parse_overrides

    return TrainConfig.from_dict(_with_raw_overrides({}, parse_overrides(overrides)))


_FLAGS = {
    "--resume": "resume",
    "--auto-resume": "auto_resume",
    "--overwrite": "overwrite",
    "--print-config": "print_config",
    "--list-options": "list_options",
}


def _take_trailing_flags(args: argparse.Namespace) -> None:
    """Flags written after the overrides (argparse leaves them in the remainder)."""
    from jsae.errors import ConfigError

    rest = []
    items = iter(args.overrides)
    for item in items:
        if item in _FLAGS:
            setattr(args, _FLAGS[item], True)
        elif item in ("--config", "-c"):
            args.config = next(items, None)
        elif item.startswith("--config="):
            args.config = item.partition("=")[2]
        elif item in ("--help", "-h"):
            args._train_parser.print_help()
            raise SystemExit(0)
        elif item.startswith("-"):
            raise ConfigError(f"unknown option {item!r} for jsae train (see jsae train --help).")
        else:
            rest.append(item)
    args.overrides = rest
