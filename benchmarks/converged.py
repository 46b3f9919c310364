"""Benchmark: do the chosen layers keep uniform LoRA's score when every method is trained to convergence?

Three stages, each resumable (rerun the same command after an interruption; finished runs are kept):

1. **Learning-rate sweep** on a validation split held out of train (``--validation-fraction``, a fixed draw):
   uniform LoRA at each of ``--lora-lrs`` and full fine-tuning at each of ``--full-lrs``, one seed, the full
   epoch budget with early stopping. The rate with the best *validation* score wins; the dev set chooses
   nothing. Selections (layer subsets of LoRA) use LoRA's rate. ``sweep.json`` records every rate's score.
2. **The bench** (``layerwise bench``) at the chosen rates, ``--seeds`` seeds, every method of ``--methods``:
   each run evaluates every half epoch, keeps the step where the validation split is best, stops after
   ``--patience`` evaluations without a better one, and reports the dev score *at that step*.
3. **Report**: ``converged.md`` (the bench table with the difference to uniform LoRA in the metric's units,
   the majority-class baseline, the sweep) and ``curve.png``, uniform LoRA's dev and validation curves (does
   the dev score plateau?).

Run the parts on separate cores by giving each its own ``--seeds`` and ``--part`` (e.g. seeds 0,1 as part a
and seed 2 as part b on the other core); ``--combine a,b`` then moves the parts' finished runs into one bench
and writes the report::

    taskset -c 1 python benchmarks/converged.py --task mrpc --data ../shared/data/glue/MRPC --out runs/converged
    python benchmarks/converged.py --task sst2 --data ../shared/data/glue/SST-2 --train-subset 8000 ...

SmolLM2 on GSM8K, for a machine with a GPU (on this project's 2-core CPU one uniform step of 4 x 96 tokens takes
about 3 s, so several hundred examples over epochs and 200 generated dev answers do not fit)::

    python benchmarks/converged.py --model smollm2-135m --task gsm8k --data ../shared/data/gsm8k \
        --train-subset 1000 --epochs 2 --batch-size 8 --max-length 384 --eval-max-examples 200 \
        --gen-max-new-tokens 256 --lora-lrs 1e-4,3e-4,1e-3 --full-lrs 1e-5,3e-5 --ks 15 \
        --methods full,lora,actnorm-top15,actnorm-threshold,cka,budget,pareto,lalora,random15 --out runs/conv-gsm8k
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

METHODS = "full,lora,actnorm-top3,actnorm-threshold,cka,budget,pareto,lalora,random2,random3"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--task", required=True)
    p.add_argument("--data", default=None)
    p.add_argument("--out", required=True, help="folder of the sweep, the bench and the report")
    p.add_argument("--train-subset", type=int, default=None, help="a fixed sample of train (e.g. SST-2)")
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=float, default=3.0, help="epoch budget of every run (early stopping ends "
                   "most runs sooner)")
    p.add_argument("--evals-per-epoch", type=int, default=2)
    p.add_argument("--patience", type=int, default=3, help="evaluations without a better validation score")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lora-lrs", default="5e-4,2e-3,5e-3")
    p.add_argument("--full-lrs", default="3e-5,1e-4")
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--ks", default="2,3", help="k of the random{k} control (and of any *-top{k} method named "
                   "without its k)")
    p.add_argument("--eval-max-examples", type=int, default=None, help="a fixed sample of dev (and validation) "
                   "examples to score (GSM8K: generation is slow)")
    p.add_argument("--gen-max-new-tokens", type=int, default=256)
    p.add_argument("--part", default="", help="name of this part's bench folder (bench-<part>) when the seeds "
                   "are split over processes")
    p.add_argument("--combine", default=None, help="comma list of parts to move into one bench and report")
    p.add_argument("--sweep-only", action="store_true")
    return p.parse_args()


def settings(args: argparse.Namespace):
    from layerwise.settings import DataSource

    data = DataSource(args.task, args.data, max_length=args.max_length, train_subset=args.train_subset,
                      validation_fraction=args.validation_fraction)
    return data


def train_config(args: argparse.Namespace, n_train: int, lr: float):
    from layerwise.train import TrainConfig

    per_epoch = math.ceil(n_train / args.batch_size)
    return TrainConfig(steps=max(1, round(args.epochs * per_epoch)), lr=lr, batch_size=args.batch_size,
                       max_length=args.max_length, eval_every=max(1, per_epoch // args.evals_per_epoch),
                       early_stopping=args.patience, group_by_length=50, warmup_ratio=0.06,
                       eval_max_examples=args.eval_max_examples, gen_max_new_tokens=args.gen_max_new_tokens)


def bench(args: argparse.Namespace, data, out: Path, methods: str, seeds: list[int], lr: float, full_lr: float):
    from layerwise.settings import AdapterChoice, BenchOptions
    from layerwise.workflows.bench import run_bench

    n_train = len(data.load().train)
    return run_bench(args.model, data, out, train_config=train_config(args, n_train, lr),
                     bench=BenchOptions(methods=methods, train_seeds=tuple(seeds),
                                        ks=tuple(int(k) for k in args.ks.split(",")), full_lr=full_lr,
                                        inference_examples=0),
                     adapter=AdapterChoice("lora", "q,v", args.rank), device="cpu", show_progress=False)


def sweep(args: argparse.Namespace, data, out: Path) -> dict:
    """Every rate of LoRA and of full fine-tuning at seed 0; the best by the validation split's main metric."""
    path = out / "sweep.json"
    if path.exists():
        return json.loads(path.read_text())
    result: dict = {"lora": {}, "full": {}}
    for method, lrs in (("lora", args.lora_lrs), ("full", args.full_lrs)):
        for lr in [float(x) for x in lrs.split(",")]:
            folder = out / "sweep" / f"{method}-lr{lr:g}"
            b = bench(args, data, folder, method, [0], lr, lr)
            cell = json.loads((folder / "cells" / method / "seed0" / "metrics.json").read_text())
            main = cell["main_metric"]
            result[method][f"{lr:g}"] = {"validation": (cell.get("best_validation") or {}).get(main),
                                         "step": cell.get("best_step"), "steps": cell.get("steps"),
                                         "dev_at_step": (cell.get("best") or {}).get(main),
                                         "higher_is_better": cell.get("higher_is_better", True),
                                         "majority": b["config"].get("majority")}
    for method in ("lora", "full"):
        runs = result[method]
        sign = 1 if next(iter(runs.values()))["higher_is_better"] else -1
        result[f"{method}_lr"] = float(max(runs, key=lambda lr: sign * (runs[lr]["validation"] or -math.inf)))
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def combine(out: Path, parts: list[str]) -> Path:
    """Move the parts' finished cells into ``out/bench`` (the first part's folder becomes it)."""
    target = out / "bench"
    for part in parts:
        src = out / f"bench-{part}"
        if not src.exists():
            continue
        if not target.exists():
            src.rename(target)
            continue
        for cell in sorted(src.glob("cells/*/seed*")):
            dest = target / cell.relative_to(src)
            if (cell / "metrics.json").exists() and not (dest / "metrics.json").exists():
                if dest.exists():
                    shutil.rmtree(dest)
                dest.parent.mkdir(parents=True, exist_ok=True)
                cell.rename(dest)
    return target


def report(args: argparse.Namespace, out: Path, result: dict, sweep_result: dict) -> None:
    from layerwise.bench.render import render_bench_md

    lines = [render_bench_md(result), "## Learning-rate sweep (seed 0, chosen on the validation split)", "",
             "| method | lr | validation (best) | at step | of steps | dev at that step |", "|---|---:|---:|---:|---:|---:|"]
    for method in ("lora", "full"):
        for lr, r in sweep_result[method].items():
            mark = " (chosen)" if float(lr) == sweep_result[f"{method}_lr"] else ""
            lines.append(f"| {method} | {lr}{mark} | {_f(r['validation'])} | {r['step']} | {r['steps']} | "
                         f"{_f(r['dev_at_step'])} |")
    (out / "converged.md").write_text("\n".join(lines) + "\n")
    _curve(out / "bench", out / "curve.png")


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _curve(bench_dir: Path, path: Path) -> None:
    """Uniform LoRA's dev and validation main metric against the step, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from layerwise.train.log import read_log

    fig, ax = plt.subplots(figsize=(6, 3.5))
    main = None
    for log in sorted(bench_dir.glob("cells/lora/seed*/train_log.jsonl")):
        evals = [r for r in read_log(log) if "eval" in r]
        if not evals:
            continue
        main = main or json.loads((log.parent / "metrics.json").read_text())["main_metric"]
        steps = [r["step"] for r in evals]
        ax.plot(steps, [r["eval"][main] for r in evals], label=f"dev, {log.parent.name}")
        if "validation" in evals[0]:
            ax.plot(steps, [r["validation"][main] for r in evals], "--", label=f"validation, {log.parent.name}")
    ax.set_xlabel("step")
    ax.set_ylabel(main or "score")
    ax.set_title("uniform LoRA: does the score plateau?")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    data = settings(args)
    chosen = sweep(args, data, out)
    print(f"learning rates chosen on the validation split: LoRA {chosen['lora_lr']:g}, "
          f"full fine-tuning {chosen['full_lr']:g}")
    if args.sweep_only:
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.combine:
        folder = combine(out, args.combine.split(","))
    else:
        folder = out / (f"bench-{args.part}" if args.part else "bench")
    result = bench(args, data, folder, args.methods, seeds, chosen["lora_lr"], chosen["full_lr"])
    if args.combine or not args.part:
        report(args, out, result, chosen)
        print(f"wrote {out / 'converged.md'} and {out / 'curve.png'}")


if __name__ == "__main__":
    main()
