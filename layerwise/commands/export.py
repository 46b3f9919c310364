"""``layerwise export``: a card's layer selection (or a finished run's) as a config for another trainer."""

from __future__ import annotations

import argparse

from layerwise.commands.common import ADAPTER, add_common, add_place_flags, guard_out, legacy_ranks, \
    selection_group, settings_record
from layerwise.commands.flags import Group, build
from layerwise.settings import ExportTarget

__all__ = ["add_parser", "run", "GROUPS"]

GROUPS = (selection_group("all"), ADAPTER, Group(ExportTarget, "export"))
"""The settings of ``layerwise export``: the selection over ``--card`` and the adapter, as ``train`` takes
them, and the format."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a layer selection as a peft, axolotl or JSON config",
                       description="Turn a Layer Card's selection (--card with the selection and adapter flags of "
                       "`layerwise train`) or a finished run (--from-run DIR) into a config for your own trainer: "
                       "--format peft writes adapter_config.json (LoraConfig.from_pretrained; it adapts exactly the "
                       "chosen modules of the model with any head), axolotl writes axolotl.yaml (its LoRA keys), "
                       "json writes selection.json. No model is loaded.")
    add_common(p, GROUPS)
    add_place_flags(p, "output folder (default: runs/export-<format>)", device=False)
    p.add_argument("--list-policies", action="store_true", help="list the selection policies and exit")
    p.set_defaults(run=run, parser=p)


def run(args: argparse.Namespace) -> int:
    if args.list_policies:
        from layerwise.commands.train import list_policies

        print(list_policies())
        return 0
    legacy_ranks(args)
    selection, adapter, target = (build(g, args) for g in GROUPS)
    from layerwise.workflows.export import export_job

    out = args.out or f"runs/export-{target.format}"
    with guard_out(args, out):
        exported, files = export_job(selection, adapter, target, out, overwrite=args.overwrite,
                                     settings=settings_record(args.parser, args))
    print(f"{exported.policy or 'selection'}{' by ' + exported.metric if exported.metric else ''}: blocks "
          f"{', '.join(map(str, exported.layers))}; {len(exported.targets)} modules ({exported.method} on "
          f"{exported.targets_spec})")
    print("wrote " + ", ".join(str(f) for f in files))
    return 0
