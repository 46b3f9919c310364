"""``layerwise card``: measure every block on calibration data and write the Layer Card."""

from __future__ import annotations

import argparse

from layerwise.commands.common import DATA, MODEL, PROBE, add_common, add_place_flags, calibration_group, \
    guard_out, settings_record
from layerwise.commands.flags import Group, build
from layerwise.runtime.io import slug

__all__ = ["add_parser", "run", "GROUPS"]

GROUPS = (MODEL, Group(DATA.cls, DATA.title, defaults={"task": None}), calibration_group(), PROBE)
"""The settings of ``layerwise card`` (``--task`` defaults to rotten-tomatoes, and is not needed with
data-free metrics: ``--metrics weights``)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="measure every transformer block and write a Layer Card",
                       description="Profile a model's blocks on N calibration examples in one streaming pass "
                       "and write card.json (reload with LayerCard.load), card.md, card.png and config.yaml. With "
                       "--metrics weights (data-free) --task is optional and no data is read.")
    add_common(p, GROUPS)
    add_place_flags(p, "output folder (default: runs/card-<model>-<task>)")
    p.add_argument("--no-plots", action="store_true", help="skip card.png")
    p.add_argument("--list-metrics", action="store_true", help="list the metrics and exit")
    p.set_defaults(run=run, parser=p)


def list_metrics() -> str:
    from layerwise.card.metrics import DEFAULT_METRICS, IMPORTANCE

    rows = [f"{'metric':<12} {'needs':<9} {'better':<7} description"]
    for m in IMPORTANCE.values():
        star = "*" if m.name in DEFAULT_METRICS else " "
        rows.append(f"{m.name:<11}{star} {m.needs:<9} {'higher' if m.higher_is_better else 'lower':<7} {m.description}")
    return "\n".join(rows + ["* measured by default"])


def run(args: argparse.Namespace) -> int:
    if args.list_metrics:
        print(list_metrics())
        return 0
    model, data, calibration, probe = (build(g, args) for g in GROUPS)  # every flag checked before loading
    from layerwise.card.metrics import is_data_free
    from layerwise.workflows.card import make_card

    if args.task is None and is_data_free(probe.metrics):  # data-free metrics need no task and read no data
        data = None
    out = args.out or f"runs/card-{slug(model.model)}-{slug(data.task if data else 'weights')}"
    with guard_out(args, out):
        card, files = make_card(model, data, out, calibration=calibration, probe=probe, device=args.device,
                                overwrite=args.overwrite, plots=not args.no_plots,
                                settings=settings_record(args.parser, args))
    print(_summary(card))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


def _summary(card) -> str:
    data = (f"{card.data['samples']} samples of {card.data['task']}" if card.data.get("task") is not None
            else "no data")
    lines = [f"Layer Card for {card.model['name']}: {card.num_layers} layers, {data}, probe "
             f"{card.probe['seconds']:.1f} s, peak {card.probe['peak_memory'] / 2**20:.0f} MiB"
             + (f", weight spectra {card.probe['weights_seconds']:.1f} s" if "weights_seconds" in card.probe else "")]
    for name in card.metric_names:
        e = card.metrics[name]
        top = ", ".join(str(i) for i in card.order(name)[: min(5, card.num_layers)])
        cum = e.get("cumulative") or {}
        extra = f"; 90% of importance in {cum['90']} layers" if "90" in cum else ""
        lines.append(f"  {name:<11} top layers {top}{extra}")
    return "\n".join(lines)
