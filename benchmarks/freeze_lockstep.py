"""Benchmark: freeze as you go (``--freeze auto`` and ``--freeze card``) against uniform LoRA, side by side.

Issue 27's targets (MiniLM on MRPC, converged setup): mean dev accuracy at least uniform LoRA's minus 0.5
points, in at most 0.60 of its training time (cache fills included). The three runs of a seed train in
lockstep in one process (one step of each in turn, each with its own random state, so machine-speed drift
falls on all alike); the step is chosen on a validation split held out of train (never on dev), and the dev
accuracy at that step is reported. The freezing settings are the defaults unless given; nothing is tuned on
dev. A reduced size (``--train-subset``) keeps it affordable on a CPU:

    python benchmarks/freeze_lockstep.py --data ../shared/data/glue/MRPC --train-subset 800 --steps 150 \\
        --lr 2e-3 --freeze-every 6 --seeds 0 --out runs/freeze-mrpc

Writes ``summary.json`` (every run's figures and the ratios) into ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from lockstep_args import lockstep_parser, short_openmp_spin

METHODS = ("uniform", "freeze-auto", "freeze-card")
"""The default runs; ``freeze-card-dropout`` (``--methods``) is freeze-card with ``--prefix-dropout``: the frozen
blocks keep their dropout, so nothing can be cached (what a cached row's missing dropout changes)."""


def parse() -> argparse.Namespace:
    p = lockstep_parser(__doc__)
    p.set_defaults(task="mrpc", data="../shared/data/glue/MRPC", steps=150, lr=2e-3, threads=1)
    p.add_argument("--train-subset", type=int, default=800, help="training examples (a fixed subset)")
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--seeds", default="0")
    p.add_argument("--samples", type=int, default=128, help="calibration examples of the card (freeze-card)")
    p.add_argument("--freeze-every", type=int, default=0, help="0: at each evaluation")
    p.add_argument("--freeze-percentile", type=float, default=50.0)
    p.add_argument("--freeze-keep-top", type=int, default=1)
    p.add_argument("--freeze-start", type=float, default=0.3)
    p.add_argument("--freeze-end", type=float, default=0.7)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--methods", default=",".join(METHODS),
                   help="runs, in lockstep: uniform, freeze-auto, freeze-card, freeze-card-dropout (uniform first)")
    return p.parse_args()


def config(args: argparse.Namespace, seed: int, freeze: str, dropout: bool = False):
    from layerwise.train import TrainConfig

    return TrainConfig(prefix_dropout=dropout, steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=seed,
                       max_length=args.max_length,
                       eval_every=args.eval_every, freeze=freeze, freeze_every=args.freeze_every,
                       freeze_percentile=args.freeze_percentile, freeze_keep_top=args.freeze_keep_top,
                       freeze_start=args.freeze_start, freeze_end=args.freeze_end)


def run_seed(args: argparse.Namespace, root: Path, seed: int, card: Path) -> dict[str, dict]:
    from layerwise.settings import DataSource
    from layerwise.train.lockstep import Lockstep
    from layerwise.workflows.train import AdapterChoice, SelectionChoice, train_job

    data = DataSource(args.task, args.data, train_subset=args.train_subset,
                      validation_fraction=args.validation_fraction, max_length=args.max_length)
    every = {"uniform": ("off", SelectionChoice("all"), False),
             "freeze-auto": ("auto", SelectionChoice("all", None, str(card)), False),  # card: only for Kendall tau
             "freeze-card": ("card", SelectionChoice("all", None, str(card)), False),
             "freeze-card-dropout": ("card", SelectionChoice("all", None, str(card)), True)}
    plans = {m: every[m] for m in args.methods.split(",")}

    def job(label: str, freeze: str, choice: SelectionChoice, dropout: bool):
        return lambda turn: train_job(args.model, data, root / f"seed{seed}" / label,
                                      train_config=config(args, seed, freeze, dropout), selection=choice,
                                      adapter=AdapterChoice(), overwrite=True, show_progress=False, callbacks=[turn])

    done = Lockstep(len(plans)).run([job(label, *plan) for label, plan in plans.items()])
    out = {}
    for label, (result, _) in zip(plans, done):
        main = "accuracy"
        out[label] = {"dev_at_validation_step": (result.best_metrics or {}).get(main),
                      "validation": (result.best_validation or {}).get(main), "best_step": result.best_step,
                      "final_dev": result.final_metrics.get(main), "train_seconds": result.train_seconds,
                      "freeze": result.freeze}
        f = result.freeze
        froze = "" if f is None else " frozen " + ",".join(f"{b}@{s}" for b, s in f["freeze_step"].items()
                                                           if s is not None)
        print(f"  seed {seed} {label}: dev {out[label]['dev_at_validation_step']} at step {result.best_step}, "
              f"{result.train_seconds:.1f} s{froze}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    args = parse()
    short_openmp_spin()
    import torch

    torch.set_num_threads(args.threads)
    from layerwise.settings import Calibration, DataSource, ProbeSettings
    from layerwise.workflows.card import make_card

    root = Path(args.out or tempfile.mkdtemp(prefix="layerwise-freeze-"))
    card_dir = root / "card"
    if not (card_dir / "card.json").exists():
        make_card(args.model, DataSource(args.task, args.data, train_subset=args.train_subset), card_dir,
                  calibration=Calibration(args.samples), probe=ProbeSettings(metrics="resnorm"), overwrite=True,
                  show_progress=False)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {seed: run_seed(args, root, seed, card_dir) for seed in seeds}
    summary = {"args": vars(args), "runs": {str(s): r for s, r in runs.items()}, "methods": {}}
    print(f"\n{args.model} on {args.task} (train subset {args.train_subset}), {args.steps} steps, batch "
          f"{args.batch_size}, lr {args.lr}, seeds {seeds}, {args.threads} thread(s); dev accuracy at the step the "
          "validation split chose")
    methods = args.methods.split(",")
    base = "uniform" if "uniform" in methods else methods[0]  # the ratios' denominator
    print(f"{'method':<20} {'dev acc':>8} {'vs ' + base:>12} {'train s':>8} {'time ratio':>10} {'kendall tau':>11}")
    uni_acc = statistics.mean(runs[s][base]["dev_at_validation_step"] for s in seeds)
    uni_s = statistics.mean(runs[s][base]["train_seconds"] for s in seeds)
    summary["baseline"] = base
    for m in methods:
        acc = statistics.mean(runs[s][m]["dev_at_validation_step"] for s in seeds)
        secs = statistics.mean(runs[s][m]["train_seconds"] for s in seeds)
        ratios = [runs[s][m]["train_seconds"] / runs[s][base]["train_seconds"] for s in seeds]
        taus = [runs[s][m]["freeze"]["kendall_tau"] for s in seeds
                if runs[s][m]["freeze"] and runs[s][m]["freeze"]["kendall_tau"] is not None]
        tau = statistics.mean(taus) if taus else None
        summary["methods"][m] = {"dev_accuracy_mean": acc, "points_vs_baseline": 100 * (acc - uni_acc),
                                 "train_seconds_mean": secs, "time_ratio_per_seed": ratios,
                                 "time_ratio_of_means": secs / uni_s, "kendall_tau_mean": tau}
        print(f"{m:<20} {acc:8.4f} {100 * (acc - uni_acc):+11.2f}p {secs:8.1f} {secs / uni_s:10.3f} "
              f"{'n/a' if tau is None else f'{tau:.2f}':>11}")
    print("targets: accuracy >= uniform - 0.5 points, time ratio <= 0.60")
    (root / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {root / 'summary.json'}")


if __name__ == "__main__":
    main()
