"""``layerwise train``: select layers, put a peft adapter there and fine-tune it with phase timing."""

from __future__ import annotations

import argparse

from layerwise.commands.common import (add_adapter_flags, add_data_flags, add_model_flags, add_selection_flags,
                                       add_training_flags, adapter_from_args, columns_from_args,
                                       selection_from_args, train_config_from_args)
from layerwise.io import slug

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="choose layers, put a peft adapter there and fine-tune it",
                       description="Fine-tune a peft adapter on the layers a policy chooses (from a Layer Card, "
                       "made on the fly when needed). Writes a standard peft adapter folder, metrics.json, "
                       "train_log.jsonl (per-step forward/backward/optimizer time and memory) and plots.png.")
    add_model_flags(p)
    add_data_flags(p)
    add_selection_flags(p)
    add_adapter_flags(p)
    add_training_flags(p)
    p.add_argument("--samples", type=int, default=256, help="calibration examples if a card must be made")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--out", default=None, help="output folder (default: runs/train-<model>-<task>-<policy>)")
    p.add_argument("--list-policies", action="store_true", help="list the selection policies and exit")
    p.set_defaults(run=run)


def list_policies() -> str:
    from layerwise.selection import POLICIES

    rows = [f"{'policy':<10} {'metric':<9} options"]
    for pol in POLICIES.values():
        opts = ", ".join(f"--{o.replace('_', '-')}" for o in pol.options if o not in ("costs",))
        rows.append(f"{pol.name:<10} {pol.default_metric or '-':<9} {opts or '-'}: {pol.description}")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    if args.list_policies:
        print(list_policies())
        return 0
    from layerwise.workflows.card import CalibrationSpec
    from layerwise.workflows.train import train_job

    out = args.out or f"runs/train-{slug(args.model)}-{slug(args.task)}-{args.policy}"
    result, chosen = train_job(
        args.model, args.task, args.data, out, train_config=train_config_from_args(args),
        selection=selection_from_args(args), adapter=adapter_from_args(args),
        calibration=CalibrationSpec(args.samples, 0, args.batch_size, args.max_length),
        columns=columns_from_args(args), regression=args.regression, cache_dir=args.cache_dir,
        trust_remote_code=args.trust_remote_code, layers_path=args.layers_path, device=args.device,
        resume=args.resume, overwrite=args.overwrite)
    print(chosen.describe())
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.final_metrics.items())
    print(f"trained {result.steps} steps in {result.train_seconds:.1f} s ({result.trainable_params:,} trainable "
          f"parameters); dev: {metrics}")
    print(f"wrote {out}/adapter (load with PeftModel.from_pretrained), metrics.json, train_log.jsonl, plots.png")
    if (args.ranks or "").strip() == "adaptive":
        from pathlib import Path

        from layerwise.adaptive.history import HISTORY_NAME, read_history

        history = read_history(Path(out) / HISTORY_NAME)
        final = ", ".join(f"{b}:{r}" for b, r in zip(history.blocks, history.ranks[-1]))
        print(f"La-LoRA final ranks (block:rank) {final}; wrote {out}/rank_history.json, ranks.png")
    return 0
