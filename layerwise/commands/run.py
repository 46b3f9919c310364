"""``layerwise run``: the main job, card -> selection -> training -> uniform-LoRA baseline -> report."""

from __future__ import annotations

import argparse

from layerwise.commands.card import add_card_flags
from layerwise.commands.common import (add_adapter_flags, add_data_flags, add_model_flags, add_selection_flags,
                                       add_training_flags, adapter_from_args, columns_from_args,
                                       selection_from_args, train_config_from_args)
from layerwise.io import slug

__all__ = ["add_parser", "run", "DEFAULT_POLICY"]

DEFAULT_POLICY = "pareto"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the main job: card, selection, training, uniform-LoRA baseline, report",
                       description="Measure the model's layers on your data (Layer Card), choose layers with a "
                       "policy, train a peft adapter there, train uniform LoRA with the same steps and seed, "
                       "and report score, trainable parameters, time per phase and peak memory as ratios.")
    add_model_flags(p)
    add_data_flags(p)
    add_card_flags(p, include_batch_size=False, include_rank=False)
    add_selection_flags(p, default_policy=DEFAULT_POLICY)
    add_adapter_flags(p)
    add_training_flags(p)
    p.add_argument("--out", default=None, help="output folder (default: runs/run-<model>-<task>)")
    p.add_argument("--side-by-side", action="store_true",
                   help="train the selection and uniform LoRA in lockstep, one step of each in turn, so that a "
                   "drift in machine speed (a busy shared machine) cannot skew the time ratio; holds both "
                   "models in memory; not with torchrun")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from layerwise.workflows.card import CalibrationSpec
    from layerwise.workflows.run import run_pipeline

    out = args.out or f"runs/run-{slug(args.model)}-{slug(args.task)}"
    report = run_pipeline(
        args.model, args.task, args.data, out, train_config=train_config_from_args(args),
        selection=selection_from_args(args), adapter=adapter_from_args(args),
        calibration=CalibrationSpec(args.samples, args.seed, args.batch_size, args.max_length),
        metrics=args.metrics, columns=columns_from_args(args), regression=args.regression,
        cache_dir=args.cache_dir, trust_remote_code=args.trust_remote_code, layers_path=args.layers_path,
        device=args.device, resume=args.resume, overwrite=args.overwrite, side_by_side=args.side_by_side)
    from layerwise.report import render_report_md

    print(render_report_md(report["rows"], report["context"]))
    print("wrote " + ", ".join(report["files"].values()))
    return 0
