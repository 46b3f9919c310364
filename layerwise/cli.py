"""The ``layerwise`` command. Each subcommand lives in ``layerwise/commands/<name>.py`` with
``add_parser(subparsers)`` and ``run(args) -> int``; heavy imports happen inside ``run`` so that
``layerwise --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from typing import Iterator, Sequence

__all__ = ["main", "build_parser", "COMMANDS"]

COMMANDS = ("models", "inspect", "card", "train", "run", "stability", "bench", "export")
"""Subcommands, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    from layerwise import __version__

    parser = argparse.ArgumentParser(
        prog="layerwise",
        description="Decide where LoRA goes in a transformer, and how much of it, from measurements "
        "of the model on your own data; then fine-tune it and show what that saved.",
    )
    parser.add_argument("--version", action="version", version=f"layerwise {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"layerwise.commands.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the chosen subcommand; user errors print without a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from layerwise.errors import LayerwiseError

    _quiet_other_ranks()
    try:
        if getattr(args, "config", None):
            args = _with_config(parser, args, argv)
        with _diagnostics_to_stderr(args.command):
            code = int(args.run(args) or 0)
            sys.stdout.flush()  # here, where a closed pipe (`| head`) is caught, not at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except LayerwiseError as err:
        print(f"layerwise {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"layerwise {args.command}: interrupted", file=sys.stderr)
        return 130


def _with_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse again with the ``--config`` file's settings as the subcommand's defaults (flags given win)."""
    from layerwise.commands.config_file import config_defaults

    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    command = subparsers[args.command]
    command.set_defaults(**config_defaults(args.config, command, args.command, subparsers))
    return parser.parse_args(argv)


def _quiet_other_ranks() -> None:
    """Under torchrun / accelerate launch only rank 0 prints results: the other ranks' stdout is discarded
    (their errors still reach stderr, prefixed by the launcher)."""
    import os

    if os.environ.get("RANK", "0") not in ("", "0"):
        sys.stdout = open(os.devnull, "w", encoding="utf-8")


@contextlib.contextmanager
def _diagnostics_to_stderr(command: str) -> Iterator[None]:
    """While the command runs, the library's log records (loggers under ``layerwise``, INFO and up) are
    printed on stderr as ``layerwise <command>: ...``; afterwards the logger is as it was, so ``main`` may run
    inside a process that has its own logging."""
    logger = logging.getLogger("layerwise")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"layerwise {command}: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _stdout_closed() -> int:
    """The reader of stdout went away (``layerwise models --json | head -1``): as the Python docs advise for
    SIGPIPE, point stdout at /dev/null so the flush at exit cannot fail again, and exit with status 1."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1
