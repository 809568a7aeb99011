"""One module per `jsae` subcommand: `add_arguments(parser)` and `run(args) -> int`."""
