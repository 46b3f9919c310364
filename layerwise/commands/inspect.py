"""``layerwise inspect``: a summary of a model, its layer stack and a task's data."""

from __future__ import annotations

import argparse

from layerwise.commands.common import DATA, MODEL, add_common
from layerwise.commands.flags import build

__all__ = ["add_parser", "run", "GROUPS"]

GROUPS = (MODEL, DATA)
"""The settings of ``layerwise inspect``."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarise a model, its transformer blocks and a task's data",
                       description="Load a model and a task and print what layerwise sees: the model's "
                       "fingerprint, its blocks with their linear sub-layers by role, and the data splits.")
    add_common(p, GROUPS)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run, parser=p)


def run(args: argparse.Namespace) -> int:
    import json

    from layerwise.workflows.inspect import inspect_model_and_task, render_inspection

    report = inspect_model_and_task(build(MODEL, args), build(DATA, args))
    print(json.dumps(report, indent=2) if args.json else render_inspection(report))
    return 0
