"""Benchmark: freeze as you go (``--freeze auto`` and ``--freeze card``) against uniform LoRA, side by side.

Issue 27's targets (MiniLM on MRPC, converged setup): mean dev accuracy at least uniform LoRA's minus 0.5
points, in at most 0.60 of its training time (cache fills included). The three runs of a seed train in
lockstep in one process (one step of each in turn, each with its own random state, so machine-speed drift
falls on all alike); the step is chosen on a validation split held out of train (never on dev), and the dev
accuracy at that step is reported. The freezing settings are the defaults unless given; nothing is tuned on
dev. A reduced size (``--train-subset``) keeps it affordable on a CPU:

    python benchmarks/freeze_lockstep.py --data ../shared/data/glue/MRPC --train-subset 800 --steps 150 \\
        --lr 2e-3 --freeze-every 6 --seeds 0 --out runs/freeze-mrpc

The converged setup of ``benchmarks/converged.py`` (all of MRPC's train, an epoch budget, evaluations every half
epoch, early stopping on the validation split) is ``--train-subset 0 --epochs 3 --patience 3 --batch-size 32``.
A method may carry its own freezing settings after ``+`` (``freeze-auto+every=13``, ``freeze-card+start=0.2+end=0.5``;
keys: every, percentile, keep_top, start, end); with several variants of one method, the one with the best mean
*validation* score is the method's result (``chosen`` in the summary), so the dev set chooses nothing:

    python benchmarks/freeze_lockstep.py --data ../shared/data/glue/MRPC --train-subset 0 --epochs 3 \\
        --patience 3 --batch-size 32 --lr 2e-3 --seeds 0 --out runs/freeze-mrpc-full/seed0 \\
        --methods uniform,freeze-auto,freeze-auto+every=13,freeze-card

Writes ``summary.json`` (every run's figures and the ratios) into ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
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
    p.add_argument("--train-subset", type=int, default=800, help="training examples (a fixed subset; 0: all)")
    p.add_argument("--epochs", type=float, default=None, help="an epoch budget instead of --steps (with "
                   "--evals-per-epoch evaluations per epoch instead of --eval-every)")
    p.add_argument("--evals-per-epoch", type=int, default=2)
    p.add_argument("--dev-eval", default="best", choices=("best", "every"), help="score dev only at the step the "
                   "validation split chose (best; the same number) or at every evaluation")
    p.add_argument("--patience", type=int, default=0, help="stop after this many evaluations without a better "
                   "validation score (0: off)")
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--seeds", default="0")
    p.add_argument("--samples", type=int, default=128, help="calibration examples of the card (freeze-card)")
    p.add_argument("--freeze-every", type=int, default=0, help="0: at each evaluation")
    p.add_argument("--freeze-percentile", type=float, default=50.0)
    p.add_argument("--freeze-keep-top", type=int, default=1)
    p.add_argument("--freeze-start", type=float, default=0.1)
    p.add_argument("--freeze-end", type=float, default=0.5)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--methods", default=",".join(METHODS),
                   help="runs, in lockstep: uniform, freeze-auto, freeze-card, freeze-card-dropout (uniform first)")
    p.add_argument("--combine", default=None, help="comma list of per-seed summary.json files: write their "
                   "combined summary to --out (a file) and print it; trains nothing")
    return p.parse_args()


VARIANT_KEYS = {"every": ("freeze_every", int), "percentile": ("freeze_percentile", float),
                "keep_top": ("freeze_keep_top", int), "start": ("freeze_start", float), "end": ("freeze_end", float)}


def variant(label: str) -> tuple[str, dict]:
    """``freeze-auto+every=13`` -> ("freeze-auto", {"freeze_every": 13}); a one-line error names a bad key."""
    base, *pairs = label.split("+")
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in VARIANT_KEYS or not value:
            raise SystemExit(f"--methods: {label!r}: expected +KEY=VALUE with KEY one of {', '.join(VARIANT_KEYS)}")
        field, kind = VARIANT_KEYS[key]
        overrides[field] = kind(value)
    return base, overrides


def budget(args: argparse.Namespace, n_train: int) -> tuple[int, int]:
    """(steps, eval_every): ``--epochs`` x steps per epoch and ``--evals-per-epoch``, else ``--steps``/``--eval-every``."""
    if args.epochs is None:
        return args.steps, args.eval_every
    per_epoch = math.ceil(n_train / args.batch_size)
    return max(1, round(args.epochs * per_epoch)), max(1, per_epoch // args.evals_per_epoch)


def config(args: argparse.Namespace, seed: int, freeze: str, dropout: bool = False, n_train: int = 0,
           overrides: dict | None = None):
    from layerwise.train import TrainConfig

    steps, eval_every = budget(args, n_train)
    settings = {"freeze_every": args.freeze_every, "freeze_percentile": args.freeze_percentile,
                "freeze_keep_top": args.freeze_keep_top, "freeze_start": args.freeze_start,
                "freeze_end": args.freeze_end, **(overrides or {})}
    return TrainConfig(prefix_dropout=dropout, steps=steps, lr=args.lr, batch_size=args.batch_size, seed=seed,
                       max_length=args.max_length, eval_every=eval_every, early_stopping=args.patience,
                       dev_eval=args.dev_eval if args.validation_fraction else "every",
                       freeze=freeze, **settings)


def run_seed(args: argparse.Namespace, root: Path, seed: int, card: Path) -> dict[str, dict]:
    from layerwise.settings import DataSource
    from layerwise.train.lockstep import Lockstep
    from layerwise.workflows.train import AdapterChoice, SelectionChoice, train_job

    data = DataSource(args.task, args.data, train_subset=args.train_subset or None,
                      validation_fraction=args.validation_fraction, max_length=args.max_length)
    n_train = len(data.load().train)
    every = {"uniform": ("off", SelectionChoice("all"), False),
             "freeze-auto": ("auto", SelectionChoice("all", None, str(card)), False),  # card: only for Kendall tau
             "freeze-card": ("card", SelectionChoice("all", None, str(card)), False),
             "freeze-card-dropout": ("card", SelectionChoice("all", None, str(card)), True)}
    plans = {}
    for label in args.methods.split(","):
        base, overrides = variant(label)
        if base not in every:
            raise SystemExit(f"--methods: unknown {base!r}; allowed: {', '.join(every)}")
        plans[label] = (*every[base], overrides)

    def job(label: str, freeze: str, choice: SelectionChoice, dropout: bool, overrides: dict):
        cfg = config(args, seed, freeze, dropout, n_train, overrides)
        return lambda turn: train_job(args.model, data, root / f"seed{seed}" / label, train_config=cfg,
                                      selection=choice, adapter=AdapterChoice(), overwrite=True, show_progress=False,
                                      callbacks=[turn])

    done = Lockstep(len(plans)).run([job(label, *plan) for label, plan in plans.items()])
    out = {}
    for label, (result, _) in zip(plans, done):
        main = "accuracy"
        out[label] = {"dev_at_validation_step": (result.best_metrics or {}).get(main),
                      "validation": (result.best_validation or {}).get(main), "best_step": result.best_step,
                      "final_dev": result.final_metrics.get(main), "train_seconds": result.train_seconds,
                      "steps": result.steps, "stopped_early": result.stopped_early,
                      "freeze": result.freeze}
        f = result.freeze
        froze = "" if f is None else " frozen " + ",".join(f"{b}@{s}" for b, s in f["freeze_step"].items()
                                                           if s is not None)
        print(f"  seed {seed} {label}: dev {out[label]['dev_at_validation_step']} at step {result.best_step}, "
              f"{result.train_seconds:.1f} s{froze}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    args = parse()
    if args.combine:
        combine(args.combine.split(","), args.out or "summary.json")
        return
    short_openmp_spin()
    import torch

    torch.set_num_threads(args.threads)
    from layerwise.settings import Calibration, DataSource, ProbeSettings
    from layerwise.workflows.card import make_card

    root = Path(args.out or tempfile.mkdtemp(prefix="layerwise-freeze-"))
    card_dir = root / "card"
    if not (card_dir / "card.json").exists():
        make_card(args.model, DataSource(args.task, args.data, train_subset=args.train_subset or None), card_dir,
                  calibration=Calibration(args.samples), probe=ProbeSettings(metrics="resnorm"), overwrite=True,
                  show_progress=False)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {str(seed): run_seed(args, root, seed, card_dir) for seed in seeds}
    summary = summarize(runs, args.methods.split(","))
    summary["args"] = vars(args)
    summary["majority"] = majority(args)
    print(f"\n{args.model} on {args.task} (train subset {args.train_subset or 'all'}), batch {args.batch_size}, "
          f"lr {args.lr}, seeds {seeds}, {args.threads} thread(s); dev accuracy at the step the validation split chose")
    print_table(summary)
    (root / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {root / 'summary.json'}")


def majority(args: argparse.Namespace) -> dict | None:
    """The majority-class baseline on dev (the most frequent class of the training part)."""
    from layerwise.data.task_metrics import majority_baseline
    from layerwise.settings import DataSource

    data = DataSource(args.task, args.data, train_subset=args.train_subset or None,
                      validation_fraction=args.validation_fraction, max_length=args.max_length).load()
    return majority_baseline(data.task, [e.label for e in data.train], [e.label for e in data.dev])


def summarize(runs: dict[str, dict[str, dict]], methods: list[str]) -> dict:
    """Means over seeds, differences and time ratios against ``uniform`` (else the first method), and, among
    the variants of one method (``freeze-auto``, ``freeze-auto+every=13``), the one with the best mean
    validation score (the dev set chooses nothing)."""
    seeds = sorted(runs)
    base = "uniform" if "uniform" in methods else methods[0]  # the ratios' denominator
    uni_acc = statistics.mean(runs[s][base]["dev_at_validation_step"] for s in seeds)
    out: dict = {"runs": runs, "seeds": seeds, "baseline": base, "methods": {}, "chosen": {}}
    for m in methods:
        acc = [runs[s][m]["dev_at_validation_step"] for s in seeds]
        val = [runs[s][m]["validation"] for s in seeds]
        ratios = [runs[s][m].get("time_ratio") or runs[s][m]["train_seconds"] / runs[s][base]["train_seconds"]
                  for s in seeds]  # time_ratio: against the uniform LoRA of the run's own lockstep process
        taus = [runs[s][m]["freeze"]["kendall_tau"] for s in seeds
                if runs[s][m]["freeze"] and runs[s][m]["freeze"]["kendall_tau"] is not None]
        out["methods"][m] = {
            "dev_accuracy_mean": statistics.mean(acc), "dev_accuracy_std": statistics.stdev(acc) if len(acc) > 1
            else None, "points_vs_baseline": 100 * (statistics.mean(acc) - uni_acc),
            "validation_mean": statistics.mean(val), "train_seconds_mean":
            statistics.mean(runs[s][m]["train_seconds"] for s in seeds), "time_ratio_per_seed": ratios,
            "time_ratio_mean": statistics.mean(ratios), "kendall_tau_mean": statistics.mean(taus) if taus else None}
    for m in methods:
        family = variant(m)[0]
        best = out["chosen"].get(family)
        if best is None or out["methods"][m]["validation_mean"] > out["methods"][best]["validation_mean"]:
            out["chosen"][family] = m
    return out


def print_table(summary: dict) -> None:
    base = summary["baseline"]
    print(f"{'method':<26} {'dev acc':>8} {'sd':>6} {'vs ' + base:>12} {'val acc':>8} {'time ratio':>10} "
          f"{'tau':>5}  chosen on validation")
    chosen = set(summary["chosen"].values())
    for m, r in summary["methods"].items():
        sd, tau = r["dev_accuracy_std"], r["kendall_tau_mean"]
        print(f"{m:<26} {r['dev_accuracy_mean']:8.4f} {'-' if sd is None else f'{sd:.4f}':>6} "
              f"{r['points_vs_baseline']:+11.2f}p {r['validation_mean']:8.4f} {r['time_ratio_mean']:10.3f} "
              f"{'n/a' if tau is None else f'{tau:.2f}':>5}  {'yes' if m in chosen else ''}")
    print("targets: accuracy >= uniform - 0.5 points, time ratio <= 0.60 (the ratio: mean over seeds of each seed's "
          "ratio, cache fills included)")


def combine(paths: list[str], out: str) -> None:
    """One summary from per-seed summaries (each ``summary.json`` of a lockstep process), over the methods that
    every seed ran. A seed may come in several parts (a second process with other variants): each run keeps
    the time ratio against the uniform LoRA of its own process (``time_ratio``), and a method run in two parts of
    a seed (uniform) is taken from the first."""
    runs: dict[str, dict[str, dict]] = {}
    order: list[str] = []
    first = None
    for path in paths:
        part = json.loads(Path(path).read_text())
        first = first or part
        base = part.get("baseline", "uniform")
        for seed, by_method in part["runs"].items():
            uniform = by_method.get(base)
            for m, r in by_method.items():
                r = dict(r)
                if "time_ratio" not in r and uniform is not None:
                    r["time_ratio"] = r["train_seconds"] / uniform["train_seconds"]
                runs.setdefault(seed, {}).setdefault(m, r)
                if m not in order:
                    order.append(m)
    methods = [m for m in order if all(m in by_method for by_method in runs.values())]
    summary = summarize({seed: {m: r[m] for m in methods} for seed, r in runs.items()}, methods)
    summary.update(parts=paths, args=first.get("args"), majority=first.get("majority"))
    if summary["majority"] is None and summary["args"]:  # a part written before summaries recorded it
        summary["majority"] = majority(argparse.Namespace(**summary["args"]))
    print_table(summary)
    Path(out).write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
