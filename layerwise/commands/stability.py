"""``layerwise stability``: how stable each metric's layer ranking is across calibration seeds and tasks."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

from layerwise.commands.common import MODEL, add_common, guard_out, settings_record
from layerwise.commands.flags import Group, build
from layerwise.runtime.errors import ConfigError
from layerwise.runtime.io import slug
from layerwise.settings import Calibration
from layerwise.settings.bench import parse_int_list
from layerwise.settings.fields import at_least, finite_numbers, flag, flag_name

__all__ = ["add_parser", "run", "StabilityOptions", "GROUPS"]


@dataclass(frozen=True)
class StabilityOptions:
    """What the stability study compares."""

    calibration_seeds: tuple[int, ...] = flag((0, 1, 2, 3, 4, 5, 6, 7, 8, 9), metavar="0-9",
                                              parse=lambda s: parse_int_list(s, "--calibration-seeds"))
    """calibration seeds, one card each, e.g. 0-9 or 0,1,2 (at least two)"""
    metrics: str | None = None
    """comma list of metrics or groups (default: default,weights: the card's defaults and the data-free snr,
    alpha_hill, kappa)"""
    ablation_steps: int = 0
    """train LoRA on each single layer for this many steps and correlate (0 = skip)"""
    ablation_lr: float = 2e-3
    """peak learning rate of the single-layer LoRA runs (2e-3: uniform LoRA's best rate on a validation split
    of MRPC train with MiniLM; a low rate leaves short single-layer runs at the majority class)"""

    FLAGS: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        finite_numbers(self)
        seeds = parse_int_list(self.calibration_seeds, flag_name(self, "calibration_seeds"))
        object.__setattr__(self, "calibration_seeds", seeds)
        if len(seeds) < 2 or min(seeds) < 0:
            raise ConfigError(f"{flag_name(self, 'calibration_seeds')} needs at least two seeds >= 0 to compare "
                              f"rankings, got {list(seeds)}")
        at_least(self, "ablation_steps", 0)
        if isinstance(self.ablation_lr, bool) or not isinstance(self.ablation_lr, (int, float)) \
                or not self.ablation_lr > 0:
            raise ConfigError(f"{flag_name(self, 'ablation_lr')} must be > 0, got {self.ablation_lr!r}")
        if self.metrics is not None:
            from layerwise.card.metrics import get_metrics

            get_metrics(self.metrics)


GROUPS = (MODEL, Group(StabilityOptions, "stability"),
          Group(Calibration, "calibration", only=("samples", "batch_size", "max_length")))
"""The settings of ``layerwise stability`` (the tasks are ``--task`` repeated)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stability", help="ranking stability of every metric across seeds and tasks",
                       description="Make one card per calibration seed (and task), then report pairwise Kendall "
                       "tau and top-k Jaccard for every k (Act-LoRA Tables 9-10), agreement across tasks, and "
                       "with --ablation-steps the correlation of each metric with the measured score of adapting "
                       "one layer at a time (Table 11). Finished cards and runs in --out are reused.")
    add_common(p, GROUPS)
    from layerwise.commands.flags import add_deprecated

    add_deprecated(p, "--seeds", "--calibration-seeds")
    p.add_argument("--task", action="append", default=None,
                   help="task, optionally with its data as TASK=PATH (repeat for several tasks; default "
                   "rotten-tomatoes)")
    p.add_argument("--out", default=None, help="output folder (default: runs/stability-<model>)")
    p.set_defaults(run=run, parser=p)


def run(args: argparse.Namespace) -> int:
    model, options, calibration = (build(g, args) for g in GROUPS)
    from layerwise.settings import DataSource
    from layerwise.evaluate.stability_render import render_stability_md, write_stability
    from layerwise.train import TrainConfig
    from layerwise.workflows.stability import stability_study

    tasks = [DataSource(t.partition("=")[0], t.partition("=")[2] or None, max_length=calibration.max_length)
             for t in (args.task or ["rotten-tomatoes"])]
    out = args.out or f"runs/stability-{slug(model.model)}"
    ablation = (TrainConfig(steps=options.ablation_steps, lr=options.ablation_lr, max_length=calibration.max_length,
                            group_by_length=50) if options.ablation_steps else None)
    with guard_out(args, out):
        result = stability_study(model, tasks, out, seeds=options.calibration_seeds, calibration=calibration,
                                 metrics=options.metrics, ablation_config=ablation,
                                 settings=settings_record(args.parser, args))
        files = write_stability(out, result)
    print(render_stability_md(result))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0
