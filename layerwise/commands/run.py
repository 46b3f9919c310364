"""``layerwise run``: the main job, card -> selection -> training -> uniform-LoRA baseline -> report."""

from __future__ import annotations

import argparse

from layerwise.commands.common import (ADAPTER, DATA, MODEL, PROBE, add_common, add_place_flags,
                                       apply_default_policy, calibration_group, guard_out,
                                       legacy_ranks, selection_group, settings_record, training_group)
from layerwise.commands.flags import Group, build
from layerwise.settings import defaults
from layerwise.runtime.io import slug

__all__ = ["add_parser", "run", "DEFAULT_POLICY", "GROUPS"]

DEFAULT_POLICY = defaults.CARD_POLICY
"""The policy without ``--policy``, ranking by :data:`~layerwise.settings.defaults.CARD_METRIC` unless
``--metric`` is given (see :func:`~layerwise.commands.common.apply_default_policy`)."""

GROUPS = (MODEL, DATA, Group(PROBE.cls, PROBE.title, only=("metrics", "pooling", "weightdelta_steps")),
          selection_group(None), ADAPTER, training_group(), calibration_group(only=("samples", "seed")))
"""The settings of ``layerwise run``: the card prices the adapter's ``--rank`` and ``--targets`` and draws
its batches with training's ``--batch-size`` and ``--max-length``."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the main job: card, selection, training, uniform-LoRA baseline, report",
                       description="Measure the model's layers on your data (Layer Card), choose layers with a "
                       "policy, train a peft adapter there, train uniform LoRA with the same steps and seed, "
                       "and report score, trainable parameters, time per phase and peak memory as ratios. "
                       "Without --policy: "
                       f"{DEFAULT_POLICY} by {defaults.CARD_METRIC} (unless --metric), the top half of the blocks.")
    add_common(p, GROUPS)
    add_place_flags(p, "output folder (default: runs/run-<model>-<task>)", resume=True)
    p.add_argument("--side-by-side", action="store_true",
                   help="train the selection and uniform LoRA in lockstep, one step of each in turn, so that a "
                   "drift in machine speed (a busy shared machine) cannot skew the time ratio; holds both "
                   "models in memory; not with torchrun")
    p.set_defaults(run=run, parser=p)


def run(args: argparse.Namespace) -> int:
    legacy_ranks(args)
    apply_default_policy(args, card=True)
    model, data, probe, selection, adapter, train_config = (build(g, args) for g in GROUPS[:6])
    calibration = build(GROUPS[6], args, batch_size=train_config.batch_size, max_length=train_config.max_length)
    from layerwise.workflows.run import run_pipeline

    out = args.out or f"runs/run-{slug(model.model)}-{slug(data.task)}"
    with guard_out(args, out):
        report = run_pipeline(model, data, out, train_config=train_config, selection=selection, adapter=adapter,
                              calibration=calibration, probe=probe, device=args.device, resume=args.resume,
                              overwrite=args.overwrite, side_by_side=args.side_by_side,
                              settings=settings_record(args.parser, args))
    from layerwise.evaluate.report import render_report_md

    print(render_report_md(report["rows"], report["context"]))
    print("wrote " + ", ".join(report["files"].values()))
    return 0
