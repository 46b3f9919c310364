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

__all__ = ["main", "build_parser", "COMMANDS", "DEBUG_ENV"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
"""Warnings raised from files under here are the library's own: shown as one ``warning:`` line."""

DEBUG_ENV = "LAYERWISE_DEBUG"
"""Environment variable that, set to 1, shows tracebacks like ``--debug``."""

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
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"layerwise.commands.{name}").add_parser(sub)
    for command in sub.choices.values():  # `layerwise train ... --debug` as well as `layerwise --debug train`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


DEBUG_HELP = f"show the Python traceback of an error (or set {DEBUG_ENV}=1)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the chosen subcommand; user errors print without a traceback.

    SIGTERM is an interrupt from here on, before the subcommands' modules are imported: ``timeout`` or a
    scheduler stopping a command that is still starting gets status 130 and one ``interrupted`` line. (A
    SIGTERM in the interpreter's own start, before this line, ends the process as the signal does by default:
    status 143 in a shell, no output, nothing started.)"""
    with _sigterm_interrupts() as term:
        command = None
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            command = getattr(args, "command", None)
            return _run(parser, args, argv, term)
        except Exception:
            if not term.received:
                raise
            return _interrupted(command)  # the interrupt, wrapped by the code it hit (RuntimeError by __set_name__)
        except KeyboardInterrupt:
            return _interrupted(command)


def _interrupted(command: str | None) -> int:
    print(f"layerwise{' ' + command if command else ''}: interrupted", file=sys.stderr)
    _forget_interrupt()
    return 130


def _forget_interrupt() -> None:
    """Keep the exit status 130 of a handled interrupt. CPython (3.11) marks an interrupt raised inside code
    run by ``exec`` of a string (as ``dataclasses`` does while a module defining a dataclass is imported) as
    unhandled, even when caught, and the interpreter then ends itself with SIGINT (status -2) whatever ``main``
    returned; every ``exec`` clears that mark when it starts, so one empty ``exec`` after the catch clears it."""
    exec("None")


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None,
         term: _Termination) -> int:
    """Run the parsed subcommand; every error but an interrupt becomes one line and an exit status (an error
    after a SIGTERM is the interrupt, which the code it hit may have wrapped or answered with an error)."""
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    _quiet_other_ranks()
    debug = bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    try:
        if getattr(args, "config", None):
            args = _with_config(parser, args, argv)
        with _diagnostics_to_stderr(args.command):
            code = int(args.run(args) or 0)
            sys.stdout.flush()  # here, where a closed pipe (`| head`) is caught, not at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except Exception as err:
        if term.received:
            raise KeyboardInterrupt from None
        return _error(err, args.command, getattr(args, "out", None), debug)


def _error(err: Exception, command: str, out: str | None, debug: bool) -> int:
    """``err`` (being handled) as one line on stderr, and the exit status: 2 for a user error (a
    ``LayerwiseError``), else 1 with the file at fault; the traceback too with ``debug``."""
    from layerwise.runtime.errors import LayerwiseError

    _traceback_if(debug)
    if isinstance(err, LayerwiseError):
        print(f"layerwise {command}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    print(f"layerwise {command}: error: {_describe(err, out)}" + ("" if debug else " (--debug shows the traceback)"),
          file=sys.stderr)
    return 1


def _traceback_if(debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()


def _one_line(text: str) -> str:
    """The first line of a message (exceptions of other libraries can span many), at most 300 characters."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= 300 else line[:297] + "..."


def _describe(err: BaseException, out: str | None) -> str:
    """An unexpected exception as one line: the file it names, and the disk when it is full."""
    import errno

    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"no space left on the device while writing {err.filename or out or 'a file'}; free some space"
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror or _one_line(str(err))}"
    free = _free_bytes(out)
    if free is not None and free < 64 * 2**20:
        return (f"{type(err).__name__}: {_one_line(str(err))}; the disk of --out {out} has only "
                f"{free / 2**20:.0f} MiB free: it is probably full")
    return f"{type(err).__name__}: {_one_line(str(err))}"


def _free_bytes(out: str | None) -> int | None:
    if not out:
        return None
    import shutil
    from pathlib import Path

    probe = Path(out)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


class _Termination:
    """Whether a SIGTERM arrived while :func:`_sigterm_interrupts` was in force."""

    received: bool = False


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[_Termination]:
    """While the command runs, SIGTERM (schedulers, ``timeout``) raises ``KeyboardInterrupt`` like Ctrl-C, so
    cleanups run (an ``--overwrite`` puts the old run back); training defers it to the next step boundary and
    saves a checkpoint (``layerwise.train.interrupt``). A process that ignores SIGTERM keeps ignoring it."""
    import signal
    import threading

    term = _Termination()
    if threading.current_thread() is not threading.main_thread():
        yield term
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN or previous is None:
        yield term
        return

    def handle(signum: int, frame: object) -> None:
        term.received = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handle)
    try:
        yield term
    finally:
        signal.signal(signal.SIGTERM, previous)


def _with_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse again with the ``--config`` file's settings as the subcommand's defaults (flags given win)."""
    from layerwise.commands.config_file import parse_with_config

    return parse_with_config(parser, args, argv)


def _quiet_other_ranks() -> None:
    """Under torchrun / accelerate launch only rank 0 prints results: the other ranks' stdout is discarded
    (their errors still reach stderr, prefixed by the launcher)."""
    import os

    if os.environ.get("RANK", "0") not in ("", "0"):
        sys.stdout = open(os.devnull, "w", encoding="utf-8")


@contextlib.contextmanager
def _diagnostics_to_stderr(command: str) -> Iterator[None]:
    """While the command runs, the library's log records (loggers under ``layerwise``, INFO and up) and its own
    warnings (``DataWarning``, ...; one line each) are printed on stderr as ``layerwise <command>: ...``;
    afterwards the logger is as it was, so ``main`` may run
    inside a process that has its own logging."""
    import warnings

    logger = logging.getLogger("layerwise")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"layerwise {command}: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    show = warnings.showwarning

    def show_ours(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if category.__module__.startswith("layerwise") or filename.startswith(_PACKAGE_DIR):
            print(f"layerwise {command}: warning: {message}", file=sys.stderr)  # one line, no source line
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_ours
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        warnings.showwarning = show


def _stdout_closed() -> int:
    """The reader of stdout went away (``layerwise models --json | head -1``): as the Python docs advise for
    SIGPIPE, point stdout at /dev/null so the flush at exit cannot fail again, and exit with status 1."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1
