"""``layerwise card``: measure every block on calibration data and write the Layer Card."""

from __future__ import annotations

import argparse

from layerwise.commands.common import add_data_flags, add_model_flags
from layerwise.io import slug

__all__ = ["add_parser", "run"]


def add_card_flags(p: argparse.ArgumentParser, include_batch_size: bool = True, include_rank: bool = True) -> None:
    """Calibration and metric flags (shared with ``layerwise run``, which has its own --batch-size/--rank)."""
    g = p.add_argument_group("calibration")
    g.add_argument("--samples", type=int, default=256, help="calibration examples drawn from train (default 256)")
    g.add_argument("--seed", type=int, default=0, help="seed of the calibration draw (default 0)")
    if include_batch_size:
        g.add_argument("--batch-size", type=int, default=16, help="examples per probe batch (default 16)")
    g.add_argument("--metrics", default=None,
                   help="comma list of metrics or groups: all, default, weights (the data-free snr, alpha_hill, "
                   "kappa) (default: every metric but weightdelta); see --list-metrics")
    if include_rank:
        g.add_argument("--rank", type=int, default=8, help="adapter rank the cost metric prices (default 8)")
        g.add_argument("--targets", default="q,v", help="projections adapted: q,v (default), attn, mlp, "
                       "all-linear, or a comma list of roles q,k,v,o,qkv,gate,up,down,gate_up")
    g.add_argument("--pooling", choices=("auto", "first", "last", "mean"), default="auto",
                   help="token CKA compares: first (encoders), last real token (decoders), or mean over tokens")
    g.add_argument("--weightdelta-steps", type=int, default=20, help="steps of the uniform-LoRA probe run that "
                   "the weightdelta metric needs (default 20)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="measure every transformer block and write a Layer Card",
                       description="Profile a model's blocks on N calibration examples in one streaming pass "
                       "and write card.json (reload with LayerCard.load), card.md and card.png. With --metrics weights "
                       "(data-free) --task is optional and no data is read.")
    add_model_flags(p)
    add_data_flags(p)
    add_card_flags(p)
    p.add_argument("--out", default=None, help="output folder (default: runs/card-<model>-<task>)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing --out folder")
    p.add_argument("--no-plots", action="store_true", help="skip card.png")
    p.add_argument("--list-metrics", action="store_true", help="list the metrics and exit")
    p.set_defaults(run=run, task=None)  # --task is optional with data-free metrics (--metrics weights)


def list_metrics() -> str:
    from layerwise.importance import DEFAULT_METRICS, IMPORTANCE

    rows = [f"{'metric':<12} {'needs':<9} {'better':<7} description"]
    for m in IMPORTANCE.values():
        star = "*" if m.name in DEFAULT_METRICS else " "
        rows.append(f"{m.name:<11}{star} {m.needs:<9} {'higher' if m.higher_is_better else 'lower':<7} {m.description}")
    return "\n".join(rows + ["* measured by default"])


def run(args: argparse.Namespace) -> int:
    if args.list_metrics:
        print(list_metrics())
        return 0
    from layerwise.commands.common import DEFAULT_TASK
    from layerwise.importance import is_data_free
    from layerwise.workflows.card import CalibrationSpec, make_card

    task = args.task or (None if is_data_free(args.metrics) else DEFAULT_TASK)  # data-free: no task needed
    out = args.out or f"runs/card-{slug(args.model)}-{slug(task or 'weights')}"
    card, files = make_card(
        args.model, task, args.data, out,
        calibration=CalibrationSpec(args.samples, args.seed, args.batch_size, args.max_length),
        metrics=args.metrics, rank=args.rank, targets=args.targets,
        pooling=None if args.pooling == "auto" else args.pooling, device=args.device,
        weightdelta_steps=args.weightdelta_steps,
        columns={"text_column": args.text_column, "pair_column": args.pair_column, "label_column": args.label_column},
        regression=args.regression, cache_dir=args.cache_dir, trust_remote_code=args.trust_remote_code,
        layers_path=args.layers_path, overwrite=args.overwrite, plots=not args.no_plots)
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
