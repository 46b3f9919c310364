"""``layerwise train``: select layers, put a peft adapter there and fine-tune it with phase timing."""

from __future__ import annotations

import argparse

from layerwise.commands.common import (ADAPTER, DATA, MODEL, add_common, add_place_flags, apply_default_policy,
                                       calibration_group, default_policy, guard_out, legacy_ranks, selection_group,
                                       settings_record, training_group)
from layerwise.commands.flags import build
from layerwise.runtime.io import slug
from layerwise.settings import defaults

__all__ = ["add_parser", "run", "GROUPS", "default_policy"]

GROUPS = (MODEL, DATA, selection_group(None), ADAPTER, training_group(), calibration_group(only=("samples", "seed")))
"""The settings of ``layerwise train`` (the card made on the fly, when a policy needs one, shares
``--batch-size`` and ``--max-length`` with training). ``--policy`` has no fixed default: see
:func:`default_policy`."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="choose layers, put a peft adapter there and fine-tune it",
                       description="Fine-tune a peft adapter on the layers a policy chooses (from a Layer Card, "
                       "made on the fly when needed). Without --policy: "
                       f"{defaults.CARD_POLICY} by {defaults.CARD_METRIC} (unless --metric) when --card is given, "
                       f"else {defaults.POLICY_WITHOUT_CARD} (uniform "
                       "LoRA). Writes a standard peft adapter folder, metrics.json, "
                       "train_log.jsonl (per-step forward/backward/optimizer time and memory), plots.png and "
                       "config.yaml.")
    add_common(p, GROUPS)
    add_place_flags(p, "output folder (default: runs/train-<model>-<task>-<policy>)", resume=True)
    p.add_argument("--list-policies", action="store_true", help="list the selection policies and exit")
    p.set_defaults(run=run, parser=p)


def list_policies() -> str:
    from layerwise.selection.policies import POLICIES

    rows = [f"{'policy':<10} {'metric':<9} options"]
    for pol in POLICIES.values():
        opts = ", ".join(f"--{o.replace('_', '-')}" for o in pol.options if o not in ("costs",))
        rows.append(f"{pol.name:<10} {pol.default_metric or '-':<9} {opts or '-'}: {pol.description}")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    if args.list_policies:
        print(list_policies())
        return 0
    legacy_ranks(args)
    apply_default_policy(args, card=bool(args.card))
    model, data, selection, adapter, train_config = (build(g, args) for g in GROUPS[:5])
    from layerwise.workflows.train import needs_card, train_job

    # The calibration sample only matters when a card is made here: `--policy all --batch-size 512` must not be
    # refused because of --samples (the card's sample), which this run never draws.
    makes_card = not selection.card and needs_card(selection, adapter, train_config)
    calibration = (build(GROUPS[5], args, batch_size=train_config.batch_size, max_length=train_config.max_length)
                   if makes_card else None)

    out = args.out or f"runs/train-{slug(model.model)}-{slug(data.task)}-{selection.policy}"
    with guard_out(args, out):
        result, chosen = train_job(model, data, out, train_config=train_config, selection=selection,
                                   adapter=adapter, calibration=calibration, device=args.device, resume=args.resume,
                                   overwrite=args.overwrite, settings=settings_record(args.parser, args))
    print(chosen.describe())
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.final_metrics.items())
    print(f"trained {result.steps} steps in {result.train_seconds:.1f} s ({result.trainable_params:,} trainable "
          f"parameters); " + (f"dev: {metrics}" if metrics else "dev scored at the chosen step only (--dev-eval best)"))
    if result.best_validation is not None and result.best_metrics is not None:
        chosen_dev = ", ".join(f"{k} {v:.4f}" for k, v in result.best_metrics.items())
        print(f"the validation split was best at step {result.best_step} (weights in {out}/best); dev there: "
              f"{chosen_dev}")
    print(f"wrote {out}/adapter (load with PeftModel.from_pretrained), metrics.json, train_log.jsonl, plots.png, "
          "config.yaml")
    if adapter.is_adaptive:
        from pathlib import Path

        from layerwise.train.lalora.history import HISTORY_NAME, read_history

        history = read_history(Path(out) / HISTORY_NAME)
        final = ", ".join(f"{b}:{r}" for b, r in zip(history.blocks, history.ranks[-1]))
        print(f"La-LoRA final ranks (block:rank) {final}; wrote {out}/rank_history.json, ranks.png")
    return 0
