"""One module per ``layerwise`` subcommand: ``add_parser(subparsers)`` and ``run(args)``."""
