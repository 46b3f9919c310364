"""Benchmark: --gradient-checkpointing for a selection and for uniform LoRA: step time and peak memory.

Four runs of layerwise's training loop on the same data, steps and seed: a selection (by default the top
blocks 27 and 29 of SmolLM2, the issue's example) and uniform LoRA, each with and without checkpointing.
Step times come from the four runs trained in lockstep (one step of each in turn, so a drift in machine speed
falls on all alike); the median step after the first is reported. Peak memory is measured apart, each run in
its own fresh process (the kernel's RSS high-water mark over its steps: in one process the four would share
the allocator's cached memory), for a few steps. Example (one core):

    python benchmarks/gradient_checkpointing.py --model smollm2-135m --task gsm8k --data ../shared/data/gsm8k \
        --layers 27,29 --steps 6 --batch-size 4 --max-length 128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from lockstep_args import lockstep_parser, short_openmp_spin

RUNS = {"selection": False, "selection+ckpt": True, "uniform": False, "uniform+ckpt": True}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = lockstep_parser(__doc__)
    p.set_defaults(model="smollm2-135m", task="gsm8k", data="../shared/data/gsm8k", steps=6, batch_size=4, threads=1)
    p.add_argument("--layers", default="27,29", help="the selection's blocks")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--memory-steps", type=int, default=2, help="steps of each fresh-process memory run")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def job(args: argparse.Namespace, label: str, out: Path, steps: int, callbacks: list):
    from layerwise.settings import DataSource
    from layerwise.train import TrainConfig
    from layerwise.workflows.train import AdapterChoice, SelectionChoice, train_job

    choice = SelectionChoice("manual", layers=args.layers) if label.startswith("selection") else SelectionChoice("all")
    cfg = TrainConfig(steps=steps, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length, seed=0,
                      eval_max_examples=1, gen_max_new_tokens=4, prefix_cache="off",
                      gradient_checkpointing=RUNS[label])
    return train_job(args.model, DataSource(args.task, args.data, max_length=args.max_length), out / label,
                     train_config=cfg, selection=choice, adapter=AdapterChoice(), overwrite=True,
                     show_progress=False, callbacks=callbacks)


def worker(args: argparse.Namespace) -> None:
    """One run in this fresh process; prints its peak memory (bytes) as JSON."""
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        result, _ = job(args, args.worker, Path(tmp), args.memory_steps, [])
    print(json.dumps({"peak": result.peak_memory}))


def step_times(args: argparse.Namespace, out: Path) -> dict[str, list[float]]:
    import torch

    from layerwise.train.lockstep import Lockstep

    torch.set_num_threads(args.threads)
    Lockstep(len(RUNS)).run([lambda turn, label=label: job(args, label, out, args.steps, [turn]) for label in RUNS])
    times = {}
    for label in RUNS:
        rows = [json.loads(line) for line in (out / label / "train_log.jsonl").read_text().splitlines()]
        times[label] = [r["step_s"] for r in rows if "step_s" in r][1:]
    return times


def peaks(args: argparse.Namespace) -> dict[str, int]:
    out = {}
    for label in RUNS:
        cmd = [sys.executable, __file__, "--worker", label, "--model", args.model, "--task", args.task,
               "--data", args.data, "--layers", args.layers, "--batch-size", str(args.batch_size),
               "--max-length", str(args.max_length), "--memory-steps", str(args.memory_steps),
               "--threads", str(args.threads), "--lr", str(args.lr)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[label] = json.loads(done.stdout.strip().splitlines()[-1])["peak"]
    return out


def main() -> None:
    args = parse()
    short_openmp_spin()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        times = step_times(args, out)
    memory = peaks(args)
    print(f"{args.model} / {args.task}: selection {args.layers} and uniform LoRA (q,v, rank 8), batch "
          f"{args.batch_size}, up to {args.max_length} tokens, {args.threads} thread(s); step time: median of steps "
          f"2-{args.steps} in lockstep; peak: RSS high-water mark of {args.memory_steps} steps in a fresh process")
    print("| run | median step s | step time vs no checkpointing | peak RSS MiB | peak vs no checkpointing |")
    print("|---|---:|---:|---:|---:|")
    for label in RUNS:
        base = label.removesuffix("+ckpt")
        t, t0 = statistics.median(times[label]), statistics.median(times[base])
        print(f"| {label} | {t:.2f} | {t / t0:.3f} | {memory[label] / 2**20:.0f} "
              f"| {memory[label] / memory[base]:.3f} |")
    if args.out:
        Path(args.out, "gradient_checkpointing.json").write_text(json.dumps({"times": times, "peaks": memory}))


if __name__ == "__main__":
    main()
