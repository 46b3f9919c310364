"""Benchmark: batches grouped by length (``--group-by-length W``) against the plain random order.

The same adapter (uniform LoRA on q,v by default), seed and steps, trained in lockstep (one step of each
in turn, see ``layerwise.train.lockstep``) so that machine-speed drift falls on both alike. Reported:
padded tokens per step, training time and dev score of each, and their ratios::

    python benchmarks/group_by_length.py --data ../shared/data/glue/SST-2 --steps 300
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from lockstep_args import lockstep_parser, short_openmp_spin


def parse() -> argparse.Namespace:
    p = lockstep_parser(__doc__)
    p.add_argument("--window", type=int, default=50, help="--group-by-length of the grouped run (default 50)")
    p.add_argument("--layers", default="all", help="'all' (uniform LoRA) or a list such as 3,4,5")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def train_lengths(args: argparse.Namespace, max_length: int) -> list[int]:
    """Tokens of every training example, as the loop encodes them."""
    from layerwise.data.collate import encode_examples
    from layerwise.settings import DataSource
    from layerwise.workflows.prepare import prepare

    ready = prepare(args.model, DataSource(args.task, args.data), "cpu")
    task, tokenizer = ready.task, ready.loaded.tokenizer
    return [len(f["input_ids"]) for f in encode_examples(task.train, tokenizer, task.task, max_length)]


def padded_tokens(args: argparse.Namespace, lengths: list[int], window: int) -> tuple[int, int]:
    """(padded, real) tokens over the run's steps, from the same data order the loop uses."""
    from layerwise.train.data_order import DataOrder

    order = DataOrder(args.seed, len(lengths), args.batch_size, lengths, window)
    batches = [order(n) for n in range(args.steps)]
    return (sum(len(b) * max(lengths[i] for i in b) for b in batches),
            sum(lengths[i] for b in batches for i in b))


def main() -> None:
    args = parse()
    short_openmp_spin()
    import torch

    from layerwise.train import TrainConfig
    from layerwise.train.lockstep import Lockstep
    from layerwise.settings import DataSource
    from layerwise.workflows.train import SelectionChoice, train_job

    torch.set_num_threads(args.threads)
    root = Path(args.out or tempfile.mkdtemp(prefix="layerwise-group-"))
    selection = (SelectionChoice("all") if args.layers == "all"
                 else SelectionChoice("manual", layers=args.layers))
    windows = {"plain": 0, f"grouped W={args.window}": args.window}

    base = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed)

    def job(label: str, window: int):
        config = replace(base, group_by_length=window)
        return lambda turn: train_job(args.model, DataSource(args.task, args.data), root / f"w{window}",
                                      train_config=config,
                                      selection=selection, overwrite=True, show_progress=False, callbacks=[turn])

    results = Lockstep(2).run([job(label, w) for label, w in windows.items()])
    rows, lengths = {}, train_lengths(args, base.max_length)
    for (label, window), (result, _) in zip(windows.items(), results):
        padded, real = padded_tokens(args, lengths, window)
        metric = next(iter(result.final_metrics))
        rows[label] = {"padded_tokens": padded, "real_tokens": real, "train_s": result.train_seconds,
                       "forward_s": result.phase_totals["forward"], "backward_s": result.phase_totals["backward"],
                       metric: result.final_metrics[metric]}
    report(args, rows, metric)
    (root / "group_by_length.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


def report(args: argparse.Namespace, rows: dict, metric: str) -> None:
    print(f"\n{args.model} on {args.task}: layers {args.layers}, {args.steps} steps, batch {args.batch_size}, "
          f"lr {args.lr}, seed {args.seed}, {args.threads} threads, in lockstep")
    print(f"{'order':<16} {'padded tok':>11} {'real share':>10} {'train s':>8} {'fwd s':>7} {'bwd s':>7} "
          f"{metric:>9}")
    for label, r in rows.items():
        print(f"{label:<16} {r['padded_tokens']:11,d} {r['real_tokens'] / r['padded_tokens']:10.3f} "
              f"{r['train_s']:8.1f} {r['forward_s']:7.1f} {r['backward_s']:7.1f} {r[metric]:9.4f}")
    plain, grouped = rows.values()
    print(f"grouped / plain: padded tokens {grouped['padded_tokens'] / plain['padded_tokens']:.3f}, training time "
          f"{grouped['train_s'] / plain['train_s']:.3f}, {metric} {grouped[metric] - plain[metric]:+.4f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
