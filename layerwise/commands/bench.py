"""``layerwise bench``: every method on the same data, steps and seeds, in one table (Act-LoRA Tables 4-7)."""

from __future__ import annotations

import argparse

from layerwise.commands.common import DATA, MODEL, add_common, add_place_flags, guard_out, settings_record, \
    training_group
from layerwise.commands.flags import Group, add_deprecated, build
from layerwise.runtime.io import slug
from layerwise.settings import defaults
from layerwise.settings import AdapterChoice, BenchOptions, Calibration, parse_int_list

__all__ = ["add_parser", "run", "parse_int_list", "list_methods", "GROUPS"]

GROUPS = (MODEL, DATA, Group(BenchOptions, "bench"), Group(AdapterChoice, "adapter", only=("rank", "targets")),
          training_group(steps=defaults.STEPS, lr=defaults.LR), Group(Calibration, "Layer Card", only=("samples",)))
"""The settings of ``layerwise bench``: every adapter cell uses ``--rank``/``--targets`` and the training
flags (``--lr`` 2e-3 by default: at 5e-4 most methods stayed at the majority class after 150 MiniLM steps on
SST-2); full fine-tuning uses ``--full-lr``."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark fine-tuning methods on the same data, steps and seeds",
                       description="Train every method x seed (full fine-tuning, LoRA and its variants, card-based "
                       "layer selections, La-LoRA) with the same data, steps and seeds; report score (mean ± std), "
                       "trainable parameters, time per phase, peak memory and inference latency (adapter "
                       "unmerged and merged), each against uniform LoRA. An existing --out is resumed: finished "
                       "cells are not trained again.")
    add_common(p, GROUPS)
    add_deprecated(p, "--seeds", "--train-seeds")
    add_deprecated(p, "--k", "--ks")
    add_deprecated(p, "--new-tokens", "--inference-new-tokens")
    add_place_flags(p, "output folder, resumed if it exists (default runs/bench-<model>-<task>); --overwrite "
                    "deletes the bench's earlier results there first")
    p.add_argument("--list-methods", action="store_true", help="list the bench methods and exit")
    p.set_defaults(run=run, parser=p)


def list_methods() -> str:
    """The registered bench methods, one a line."""
    from layerwise.bench import BENCH_METHODS

    rows = [f"{'method':<17} {'card':<5} description"]
    for m in BENCH_METHODS.values():
        rows.append(f"{m.name:<17} {'yes' if m.needs_card else '':<5} {m.description}")
    return "\n".join(rows + ["{k}: one method per --k value (actnorm-top expands to every --ks)"])


def run(args: argparse.Namespace) -> int:
    if args.list_methods:
        print(list_methods())
        return 0
    model, data, bench, adapter, train_config = (build(g, args) for g in GROUPS[:5])
    calibration = build(GROUPS[5], args, seed=0, batch_size=min(16, args.samples), max_length=train_config.max_length)
    from layerwise.bench.render import render_bench_md
    from layerwise.workflows.bench import run_bench

    out = args.out or f"runs/bench-{slug(model.model)}-{slug(data.task)}"
    with guard_out(args, out):
        result = run_bench(model, data, out, train_config=train_config, bench=bench, adapter=adapter,
                           calibration=calibration, device=args.device, overwrite=args.overwrite,
                           settings=settings_record(args.parser, args))
    print(render_bench_md(result))
    print("wrote " + ", ".join(result["files"].values()))
    return 0
