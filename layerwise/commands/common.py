"""The settings groups the subcommands share, and the flags that are places or actions (``--out``,
``--device``, ``--overwrite``, ``--resume``, ``--config``). Flags of settings are generated from the
dataclasses of :mod:`layerwise.settings` (see :mod:`layerwise.commands.flags`)."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from layerwise.commands.flags import Group, add_deprecated, add_groups, settings_of
from layerwise.settings import (AdapterChoice, Calibration, DataSource, ModelSource, ProbeSettings,
                                SelectionChoice)
from layerwise.settings import defaults
from layerwise.settings.sources import DEFAULT_MODEL, DEFAULT_TASK
from layerwise.train.config import TrainConfig

__all__ = ["MODEL", "DATA", "PROBE", "ADAPTER", "selection_group", "calibration_group", "training_group",
           "add_common", "add_place_flags", "legacy_ranks", "settings_record", "DEFAULT_MODEL", "DEFAULT_TASK",
           "DEFAULT_LR", "DEFAULT_STEPS", "INPUT_FLAGS", "guard_out"]

DEFAULT_LR = defaults.LR
"""Peak learning rate of the commands (:data:`layerwise.settings.defaults.LR`)."""
DEFAULT_STEPS = defaults.STEPS
"""Optimizer steps of ``train`` and ``run`` (:data:`layerwise.settings.defaults.STEPS`)."""

MODEL = Group(ModelSource, "model")
DATA = Group(DataSource, "data", defaults={"task": None})
"""``--task`` unset: inferred from ``--data`` (a .csv/.tsv/.jsonl file is your own task), else rotten-tomatoes."""
PROBE = Group(ProbeSettings, "Layer Card")
ADAPTER = Group(AdapterChoice, "adapter")


def selection_group(default_policy: str = "all") -> Group:
    """``--policy`` and its options, with this command's default policy."""
    return Group(SelectionChoice, "layer selection", defaults={"policy": default_policy})


def default_policy(card: str | bool | None) -> str:
    """The policy without ``--policy``: the card's policy (:data:`~layerwise.settings.defaults.CARD_POLICY`, as
    ``layerwise run``) when there is a card, so that a given card is never ignored, else uniform LoRA
    (:data:`~layerwise.settings.defaults.POLICY_WITHOUT_CARD`)."""
    return defaults.CARD_POLICY if card else defaults.POLICY_WITHOUT_CARD


def apply_default_policy(args: argparse.Namespace, card: bool) -> None:
    """Fill ``args.policy`` when ``--policy`` was not given (:func:`default_policy`); the card's policy ranks by
    :data:`~layerwise.settings.defaults.CARD_METRIC` unless ``--metric`` is given."""
    if args.policy is not None:
        return
    args.policy = default_policy(card)
    if card and getattr(args, "metric", None) is None:
        args.metric = defaults.CARD_METRIC


def calibration_group(only: Sequence[str] | None = None) -> Group:
    """The calibration sample; commands that train share ``--batch-size``/``--max-length`` with training."""
    return Group(Calibration, "calibration", only=only)


def training_group(steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, **defaults: Any) -> Group:
    """Every ``TrainConfig`` field, with this command's step count and learning rate."""
    return Group(TrainConfig, "training", defaults={"steps": steps, "lr": lr, **defaults})


def add_common(p: argparse.ArgumentParser, groups: Sequence[Group]) -> None:
    """Add the groups' flags, ``--config``, and the old spellings of renamed flags (deprecated)."""
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML, JSON or TOML file of settings (keys are flag names, e.g. lr: 1e-3); flags given on "
                   "the command line win; every run writes its resolved settings as config.yaml")
    add_groups(p, groups)
    known = p._option_string_actions
    if "--calibration-seed" in known:
        add_deprecated(p, "--seed", "--calibration-seed")
    if "--kind" in known:
        add_deprecated(p, "--regression", "--kind", value="regression")


def add_place_flags(p: argparse.ArgumentParser, out_help: str, resume: bool = False, device: bool = True) -> None:
    """``--out``, ``--overwrite``, and ``--device`` / ``--resume`` where the command has them."""
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, help=out_help)
    g.add_argument("--overwrite", action="store_true", help="replace the files of an existing --out folder")
    if resume:
        g.add_argument("--resume", action="store_true", help="continue from --out's checkpoint at its exact step")
    if device:
        g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def legacy_ranks(args: argparse.Namespace) -> None:
    """The old ``--ranks adaptive`` (before ``--adaptive-ranks``) still works, with a deprecation message."""
    import sys

    if isinstance(getattr(args, "ranks", None), str) and args.ranks.strip() == "adaptive":
        print("layerwise: --ranks adaptive is deprecated and will be removed in the next release; use "
              "--adaptive-ranks", file=sys.stderr)
        args.ranks, args.adaptive_ranks = None, True


def settings_record(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Every resolved setting of ``args`` (what ``config.yaml`` holds)."""
    return settings_of(p, args)


INPUT_FLAGS = {"card": "--card", "from_run": "--from-run", "data": "--data", "config": "--config", "model": "--model"}
"""Destinations of the flags that name a file or folder a command reads: ``--out`` is kept apart from each."""


def guard_out(args: argparse.Namespace, out: str) -> Any:
    """The context a command writes ``out`` in: refused (naming both flags) when ``out`` is, holds or lies in
    one of the command's inputs (:mod:`layerwise.runtime.apart`), and locked against a second process on
    the same ``out`` (:mod:`layerwise.runtime.out_lock`). A ``--config`` inside ``--out`` is allowed with
    ``--resume`` only (resuming from the run's own ``config.yaml`` or card; the resume check compares the
    settings)."""
    from layerwise.runtime.apart import check_apart
    from layerwise.runtime.out_lock import hold_out_lock

    inputs = {flag: getattr(args, dest, None) for dest, flag in INPUT_FLAGS.items()}
    if getattr(args, "resume", False):  # a resumed run reads its own config.yaml and card and replaces nothing
        inputs.pop("--config")
        inputs.pop("--card")
    tasks = getattr(args, "task", None)
    for task in tasks if isinstance(tasks, list) else []:  # stability's repeated --task TASK=PATH
        inputs[f"--task {task.partition('=')[0]}="] = task.partition("=")[2] or None
    check_apart(out, inputs)
    return hold_out_lock(out)
