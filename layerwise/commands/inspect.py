"""``layerwise inspect``: a summary of a model, its layer stack and a task's data."""

from __future__ import annotations

import argparse

from layerwise.commands.common import add_data_flags, add_model_flags

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarise a model, its transformer blocks and a task's data",
                       description="Load a model and a task and print what layerwise sees: the model's "
                       "fingerprint, its blocks with their linear sub-layers by role, and the data splits.")
    add_model_flags(p)
    add_data_flags(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from layerwise.inspection import inspect_model_and_task, render_inspection

    report = inspect_model_and_task(
        model=args.model, task=args.task, data=args.data, cache_dir=args.cache_dir,
        trust_remote_code=args.trust_remote_code, layers_path=args.layers_path,
        columns={"text_column": args.text_column, "pair_column": args.pair_column,
                 "label_column": args.label_column}, regression=args.regression, max_length=args.max_length,
    )
    print(json.dumps(report, indent=2) if args.json else render_inspection(report))
    return 0
