"""Benchmark: La-LoRA adaptive ranks against fixed-rank LoRA on SST-2 with MiniLM, measured in one run.

Three trainings with the same steps, data order and seed:

1. ``adaptive``: La-LoRA (``--ranks adaptive``), adapter built at ``--r-max``;
2. ``fixed r_max``: plain LoRA at rank ``--r-max`` everywhere, trained in lockstep with run 1 (one optimizer
   step of each in turn, each with its own random state), so that a drift in machine speed falls on both;
3. ``uniform``: plain LoRA at ``round(mean final r_i)`` of run 1, about the same parameter count.

Reported: (a) the allocator's cost (Eq. 5-10, timed inside the callback, apart from the step) and the
pruned-slice bookkeeping as % of the adaptive run's step time; (b) training time and step time of run 1
against run 2 from their lockstep training logs (whole run, median step, median step of the second half, when
the ranks have settled), and the step time at the final adaptive ranks against fixed LoRA at ``r_max`` timed
interleaved on the same batches after training; (c) dev score of the adaptive run against the uniform run with
the same parameter count (and the fixed ``r_max`` run). With the defaults it takes about 10 minutes on 2 CPU
cores::

    python benchmarks/adaptive_rank.py --data ../shared/data/glue/SST-2
    python benchmarks/adaptive_rank.py --steps 600 --targets all-linear --r-max 16 --gamma 3
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

from lockstep_args import short_openmp_spin


def load(args: argparse.Namespace):
    """(task data, loaded model) once for every run."""
    from layerwise.settings import DataSource
    from layerwise.workflows.prepare import prepare

    ready = prepare(args.model, DataSource(args.task, args.data), "cpu")
    return ready.task, ready.loaded


def build(loaded, args: argparse.Namespace, rank: int, adaptive: bool):
    """(peft model, La-LoRA callback or None) on a fresh copy of the base model, seeded like ``train_job``."""
    import torch

    from layerwise.train.lalora import LaLoRA
    from layerwise.adapters.bridge import apply_adapter
    from layerwise.models.layers import find_layer_stack

    base = copy.deepcopy(loaded.model)
    stack = find_layer_stack(base)
    torch.manual_seed(args.seed)
    model = apply_adapter(base, stack, list(range(len(stack))), method="lora", targets=args.targets, rank=rank)
    callback = (LaLoRA(model, stack, r_max=rank, gamma=args.gamma, interval=args.rank_interval, scale=args.rank_scale,
                       contribution=args.contribution)
                if adaptive else None)
    return model, callback


def train_job(name: str, data, loaded, args: argparse.Namespace, rank: int, adaptive: bool):
    """A job for :class:`Lockstep` (``job(turn)``) that trains one configuration and returns its row: dev
    metrics, timings and (adaptive) final ranks."""
    from layerwise.train import TrainConfig, train
    from layerwise.train.log import read_log, step_lines

    model, callback = build(loaded, args, rank, adaptive)
    config = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length,
                         seed=args.seed, eval_max_examples=args.eval_max_examples)
    out = Path(args.out) / name

    def job(turn) -> dict:
        print(f"training {name} (rank {rank}{', adaptive' if adaptive else ''}) ...", flush=True)
        callbacks = [callback, turn] if callback is not None else [turn]
        result = train(model, loaded.tokenizer, data.task, data.train, data.dev, config, out,
                       callbacks=callbacks, show_progress=False, weights_writer=callback)
        steps = [r["step_s"] for r in step_lines(read_log(result.log_path))]
        row = {"name": name, "rank": rank, "score": result.final_metrics[data.task.main_metric],
               "train_s": result.train_seconds, "median_step_s": statistics.median(steps),
               "late_median_step_s": statistics.median(steps[len(steps) // 2:]),
               "lora_params": lora_params(model, callback)}
        if callback is not None:
            row.update(final_ranks=callback.ranks, budget=callback.budget, allocation_s=callback.allocation_seconds,
                       bookkeeping_s=callback.bookkeeping_seconds, model=model, callback=callback)
        return row

    return job


def train_runs(data, loaded, args: argparse.Namespace, runs: dict[str, tuple[int, bool]]) -> dict[str, dict]:
    """Train ``{name: (rank, adaptive)}`` in lockstep (one optimizer step of each in turn, each run with its own
    random state), so that a drift in machine speed falls on every run alike; their rows by name."""
    from layerwise.train.lockstep import Lockstep

    jobs = [train_job(name, data, loaded, args, rank, adaptive) for name, (rank, adaptive) in runs.items()]
    return dict(zip(runs, Lockstep(len(jobs)).run(jobs)))


def mean_rank(row: dict) -> float:
    """Mean of the adaptive run's final per-block ranks."""
    return sum(row["final_ranks"]) / len(row["final_ranks"])


def lora_params(model, callback) -> int:
    """LoRA parameters the exported adapter holds: sum over modules of r * (in + out)."""
    from peft.tuners.lora import LoraLayer

    ranks = callback.module_ranks if callback is not None else {}
    total = 0
    for name, layer in model.base_model.model.named_modules():
        if isinstance(layer, LoraLayer):
            a = layer.lora_A["default"].weight
            b = layer.lora_B["default"].weight
            total += ranks.get(name, a.shape[0]) * (a.shape[1] + b.shape[0])
    return total


def time_steps(data, loaded, args: argparse.Namespace, adaptive_row: dict) -> dict[str, float]:
    """Median seconds per training step (forward, backward, AdamW with the callback's hooks), the adaptive model
    at its final ranks against fixed LoRA at r_max, interleaved over the same batches."""
    import torch

    from layerwise.data.collate import Collator, encode_examples

    feats = encode_examples(data.train[: args.batch_size * args.timing_steps], loaded.tokenizer, data.task,
                            args.max_length)
    collate = Collator(loaded.tokenizer, data.task)
    batches = [collate(feats[i:i + args.batch_size]) for i in range(0, len(feats), args.batch_size)]
    runs = {}
    for name, adaptive in (("adaptive", True), ("fixed", False)):
        model, callback = build(loaded, args, args.r_max, adaptive)
        if callback is not None:
            callback.interval = 10**9  # keep the final ranks while timing; the allocation is timed in training
            callback.set_ranks(adaptive_row["final_ranks"])
        params = [p for p in model.parameters() if p.requires_grad]
        runs[name] = (model.train(), callback, torch.optim.AdamW(params, lr=args.lr))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i, batch in enumerate(batches * 2):  # first pass warms up, second pass is timed
        for name, (model, callback, opt) in runs.items():
            start = time.perf_counter()
            model(**batch).loss.backward()
            if callback is not None:
                callback.before_optimizer_step(opt)
            opt.step()
            if callback is not None:
                callback.after_optimizer_step(i + 1)
            opt.zero_grad(set_to_none=True)
            if i >= len(batches):
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(rows: dict[str, dict], timing: dict[str, float], args: argparse.Namespace) -> dict:
    """Print the table of measured figures and ratios; return them as a dict."""
    ad, fixed, uni = rows["adaptive"], rows["fixed"], rows["uniform"]
    step_s = ad["train_s"] / args.steps
    alloc_ms, keep_ms = 1e3 * ad["allocation_s"] / args.steps, 1e3 * ad["bookkeeping_s"] / args.steps
    ranks_mean = mean_rank(ad)
    lines = [
        f"La-LoRA on {args.task} with {args.model}: {args.steps} steps, batch {args.batch_size}, targets "
        f"{args.targets}, r_max {args.r_max}, gamma {args.gamma}, scale {args.rank_scale}, contribution "
        f"{args.contribution}, seed {args.seed}",
        f"final ranks {ad['final_ranks']} (mean {ranks_mean:.2f}), budget {ad['budget']:.2f}",
        "",
        "(a) allocation cost (adaptive training run)",
        f"    step time                               {1e3 * step_s:9.2f} ms",
        f"    allocation, Eq. 5-10 (every {args.rank_interval} step)      {alloc_ms:9.3f} ms  "
        f"{100 * alloc_ms / (1e3 * step_s):6.3f} % of the step",
        f"    pruned slices kept (before/after step)  {keep_ms:9.3f} ms  {100 * keep_ms / (1e3 * step_s):6.3f} %",
        "",
        "(b) step time at the final adaptive ranks vs fixed LoRA at r_max (interleaved, same batches, median)",
        f"    adaptive {1e3 * timing['adaptive']:9.2f} ms   fixed r_max {1e3 * timing['fixed']:9.2f} ms   "
        f"ratio {timing['adaptive'] / timing['fixed']:.3f}",
        "    training in lockstep (one step of each in turn), from the training logs:",
        f"      whole run      adaptive {ad['train_s']:8.1f} s    fixed r_max {fixed['train_s']:8.1f} s    ratio "
        f"{ad['train_s'] / fixed['train_s']:.3f}",
        f"      median step    adaptive {1e3 * ad['median_step_s']:8.2f} ms   fixed r_max "
        f"{1e3 * fixed['median_step_s']:8.2f} ms   ratio {ad['median_step_s'] / fixed['median_step_s']:.3f}",
        f"      median step, second half   adaptive {1e3 * ad['late_median_step_s']:8.2f} ms   fixed r_max "
        f"{1e3 * fixed['late_median_step_s']:8.2f} ms   ratio "
        f"{ad['late_median_step_s'] / fixed['late_median_step_s']:.3f}",
        "",
        "(c) dev score",
        f"    {'run':<14} {'rank':>6} {'LoRA params':>12} {'dev':>8}",
    ]
    for row in (ad, uni, fixed):
        rank = f"{ranks_mean:.2f}" if row is ad else str(row["rank"])
        lines.append(f"    {row['name']:<14} {rank:>6} {row['lora_params']:>12,} {row['score']:8.4f}")
    lines.append(f"    adaptive - uniform (same parameter count): {ad['score'] - uni['score']:+.4f}; params ratio "
                 f"{ad['lora_params'] / uni['lora_params']:.3f}")
    print("\n".join(lines))
    return {"args": vars(args), "final_ranks": ad["final_ranks"], "budget": ad["budget"],
            "step_ms": 1e3 * step_s, "allocation_ms": alloc_ms, "bookkeeping_ms": keep_ms,
            "timed_step_ms": {k: 1e3 * v for k, v in timing.items()},
            "runs": {k: {f: v for f, v in r.items() if f not in ("model", "callback")} for k, r in rows.items()}}


def report_scores(rows: dict[str, dict], args: argparse.Namespace) -> None:
    """(c) alone: print and save the adaptive and uniform dev scores of this seed."""
    from layerwise.runtime.io import atomic_write_json

    ad, uni = rows["adaptive"], rows["uniform"]
    ranks_mean = mean_rank(ad)
    print(f"seed {args.seed}: adaptive (mean rank {ranks_mean:.2f}, {ad['lora_params']:,} params) {ad['score']:.4f}; "
          f"uniform rank {uni['rank']} ({uni['lora_params']:,} params) {uni['score']:.4f}; "
          f"difference {ad['score'] - uni['score']:+.4f}")
    runs = {k: {f: v for f, v in r.items() if f not in ("model", "callback")} for k, r in rows.items()}
    atomic_write_json(Path(args.out) / "scores.json", {"args": vars(args), "runs": runs})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--task", default="sst2")
    p.add_argument("--data", default="../shared/data/glue/SST-2")
    p.add_argument("--targets", default="q,v")
    p.add_argument("--r-max", type=int, default=8)
    p.add_argument("--gamma", type=float, default=None, help="default: layerwise.train.lalora.DEFAULT_GAMMA")
    p.add_argument("--rank-interval", type=int, default=1)
    p.add_argument("--contribution", choices=("norm", "fisher"), default="norm",
                   help="La-LoRA contributions: truncated norms (Eq. 9, default) or accumulated Fisher information")
    p.add_argument("--rank-scale", choices=("rmax", "ri"), default="rmax",
                   help="La-LoRA scaling alpha/r_max (the paper's, default) or alpha/r_i")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-max-examples", type=int, default=None, help="default: the whole dev set")
    p.add_argument("--timing-steps", type=int, default=20, help="batches timed per model in (b)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/bench-adaptive-rank")
    p.add_argument("--score-only", action="store_true",
                   help="only (c): the adaptive and same-size uniform runs, no fixed r_max run or step timing "
                   "(for more seeds, e.g. one process per core with --threads 1)")
    args = p.parse_args()
    short_openmp_spin()

    import torch

    from layerwise.train.lalora import DEFAULT_GAMMA
    from layerwise.runtime.io import atomic_write_json

    torch.set_num_threads(args.threads)
    args.gamma = DEFAULT_GAMMA if args.gamma is None else args.gamma
    data, loaded = load(args)
    first = {"adaptive": (args.r_max, True)}
    if not args.score_only:
        first["fixed"] = (args.r_max, False)  # in lockstep with the adaptive run: (b) from the training logs
    rows = train_runs(data, loaded, args, first)
    uniform_rank = max(1, round(mean_rank(rows["adaptive"])))
    rows.update(train_runs(data, loaded, args, {"uniform": (uniform_rank, False)}))
    if args.score_only:
        report_scores(rows, args)
        return
    print("timing steps ...", flush=True)
    timing = time_steps(data, loaded, args, rows["adaptive"])
    summary = report(rows, timing, args)
    atomic_write_json(Path(args.out) / "summary.json", summary)


if __name__ == "__main__":
    main()
