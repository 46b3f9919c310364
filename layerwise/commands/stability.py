"""``layerwise stability``: how stable each metric's layer ranking is across calibration seeds and tasks."""

from __future__ import annotations

import argparse

from layerwise.commands.common import add_model_flags
from layerwise.io import slug

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stability", help="ranking stability of every metric across seeds and tasks",
                       description="Make one card per calibration seed (and task), then report pairwise Kendall "
                       "tau and top-k Jaccard for every k (Act-LoRA Tables 9-10), agreement across tasks, and "
                       "with --ablation-steps the correlation of each metric with the measured score of adapting "
                       "one layer at a time (Table 11). Finished cards and runs in --out are reused.")
    add_model_flags(p)
    p.add_argument("--task", action="append", default=None,
                   help="task, optionally with its data as TASK=PATH (repeat for several tasks; default "
                   "rotten-tomatoes)")
    p.add_argument("--seeds", default="0-9", help="calibration seeds, e.g. 0-9 or 0,1,2 (default 0-9)")
    p.add_argument("--samples", type=int, default=256, help="calibration examples per card (default 256)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--metrics", default=None, help="comma list of metrics or groups (default: default,weights: "
                   "the card's defaults and the data-free snr, alpha_hill, kappa)")
    p.add_argument("--ablation-steps", type=int, default=0,
                   help="train LoRA on each single layer for this many steps and correlate (0 = skip)")
    p.add_argument("--out", default=None, help="output folder (default: runs/stability-<model>)")
    p.set_defaults(run=run)


def parse_seeds(spec: str) -> list[int]:
    from layerwise.errors import ConfigError

    seeds: list[int] = []
    try:
        for part in spec.split(","):
            a, _, b = part.partition("-")
            seeds += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError as err:
        raise ConfigError(f"--seeds takes a list like 0-9 or 0,1,2, got {spec!r}") from err
    if len(seeds) < 2:
        raise ConfigError(f"--seeds needs at least two seeds to compare rankings, got {spec!r}")
    return seeds


def run(args: argparse.Namespace) -> int:
    from layerwise.stability_render import render_stability_md, write_stability
    from layerwise.train import TrainConfig
    from layerwise.workflows.card import CalibrationSpec
    from layerwise.workflows.stability import stability_study

    tasks = [(t.partition("=")[0], t.partition("=")[2] or None) for t in (args.task or ["rotten-tomatoes"])]
    out = args.out or f"runs/stability-{slug(args.model)}"
    ablation = TrainConfig(steps=args.ablation_steps, max_length=args.max_length) if args.ablation_steps else None
    result = stability_study(args.model, tasks, out, seeds=parse_seeds(args.seeds),
                             calibration=CalibrationSpec(args.samples, 0, args.batch_size, args.max_length),
                             metrics=args.metrics, ablation_config=ablation)
    files = write_stability(out, result)
    print(render_stability_md(result))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0
