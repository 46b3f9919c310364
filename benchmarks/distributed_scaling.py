"""Benchmark: data-parallel scaling of the Layer Card pass and of training steps, N processes vs 1.

Each process is pinned to one core (``--cores``; rank i gets ``cores[i]``) and uses one thread, so N processes
use N cores and 1 process uses ``cores[0]``. The same global work is done both ways:

- card: the same ``--samples`` in batches of ``--card-batch-size`` (N processes split the batches);
- training: the same global batch ``--global-batch`` (``global / N`` per rank), every batch padded to
  ``--max-length`` so steps cost the same.

Reported per mode: the probe pass's examples/s (the slowest rank's pass time) and the median training step's
examples/s (rank 0's steps after ``--warmup``), each the median of ``--repeats`` fresh runs, and the speed-up.
Example (the numbers in docs/DISTRIBUTED.md):

    OMP_NUM_THREADS=1 python benchmarks/distributed_scaling.py --cores 1,0 --samples 256 --card-batch-size 16 \
        --global-batch 16 --steps 12 --repeats 2

On GPUs pass ``--device cuda`` (one GPU per process; ``--cores`` still pins the host threads).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

_HERE = os.path.abspath(__file__)


def worker(args: argparse.Namespace) -> None:
    """One process of a run (under torchrun or alone): pin, work, and print rank 0's result as JSON."""
    import torch

    cores = [int(c) for c in args.cores.split(",")]
    os.sched_setaffinity(0, {cores[int(os.environ.get("LOCAL_RANK", "0"))]})
    torch.set_num_threads(1)
    from layerwise.runtime import distributed

    result = card_run(args) if args.kind == "card" else train_run(args)
    if distributed.is_main():
        print("RESULT " + json.dumps(result), flush=True)


def card_run(args: argparse.Namespace) -> dict:
    """The card of ``--samples`` examples: the probe pass (slowest rank) and the whole ``profile_layers`` call
    (pass, reduction over ranks and metrics; model loading excluded)."""
    import time

    from layerwise.runtime import distributed
    from layerwise.runtime.device import resolve_device
    from layerwise.card.profiling import profile_layers
    from layerwise.settings import Calibration, DataSource
    from layerwise.workflows.card import calibration_batches
    from layerwise.workflows.prepare import prepare

    device = resolve_device(args.device)  # joins the process group under torchrun
    ready = prepare(args.model, DataSource(args.task, args.data), device)
    task, loaded = ready.task, ready.loaded
    batches = calibration_batches(task, loaded.tokenizer,
                                  Calibration(args.samples, 0, args.card_batch_size, args.max_length))
    distributed.barrier()
    start = time.perf_counter()
    card = profile_layers(loaded.model, batches, device=device, show_progress=False)
    total = time.perf_counter() - start
    examples = card.probe["examples"]
    return {"pass_s": card.probe["seconds"], "card_s": total, "examples_per_s": examples / card.probe["seconds"],
            "card_examples_per_s": examples / total}


def train_run(args: argparse.Namespace) -> dict:
    """``--steps`` of uniform LoRA at the global batch; the median step time after the warm-up."""
    from layerwise.runtime import distributed
    from layerwise.train import TrainConfig
    from layerwise.train.log import read_log, step_lines
    from layerwise.workflows.train import train_job

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = TrainConfig(steps=args.steps, batch_size=args.global_batch // world, max_length=args.max_length,
                      pad_to=args.max_length, eval_max_examples=8)
    from layerwise.settings import DataSource

    train_job(args.model, DataSource(args.task, args.data), args.out, train_config=cfg, device=args.device,
              overwrite=True, show_progress=False)
    if not distributed.is_main():
        return {}
    times = [r["step_s"] for r in step_lines(read_log(os.path.join(args.out, "train_log.jsonl")))[args.warmup:]]
    step_s = statistics.median(times)
    return {"step_s": step_s, "examples_per_s": args.global_batch / step_s}


def launch(args: argparse.Namespace, kind: str, nprocs: int, out: str) -> dict:
    """One fresh run of ``kind`` with ``nprocs`` processes; rank 0's result."""
    common = [_HERE, "--worker", kind, *sys.argv[1:], "--out", out]
    if nprocs == 1:
        cmd = [sys.executable, *common]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nprocs), "--master_addr",
               "127.0.0.1", "--master_port", str(args.port), *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAYERWISE_PROGRESS": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{kind} with {nprocs} process(es) failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    """Measure (or, with ``--worker``, be one process of a measured run)."""
    args = parse_args()
    if args.worker:
        args.kind = args.worker
        worker(args)
        return
    nprocs = len(args.cores.split(","))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            for n in (1, nprocs):  # interleaved over repeats
                rows.setdefault((kind, n), [])
            for r in range(args.repeats):
                for n in (1, nprocs):
                    rows[(kind, n)].append(launch(args, kind, n, os.path.join(tmp, f"{kind}-{n}-{r}")))
    report(rows, nprocs, args)


def report(rows: dict, nprocs: int, args: argparse.Namespace) -> None:
    """Medians and speed-ups, then every run's numbers as JSON."""
    print(f"model {args.model}, task {args.task}, max length {args.max_length}, cores {args.cores}, "
          f"median of {args.repeats} run(s)")
    for kind, what in (("card", f"card pass ({args.samples} examples, batches of {args.card_batch_size})"),
                       ("train", f"training step (global batch {args.global_batch})")):
        if (kind, 1) not in rows:
            continue
        one = statistics.median(r["examples_per_s"] for r in rows[(kind, 1)])
        many = statistics.median(r["examples_per_s"] for r in rows[(kind, nprocs)])
        print(f"{what}: 1 process {one:.1f} ex/s, {nprocs} processes {many:.1f} ex/s, speed-up {many / one:.2f}x")
        if kind == "card":
            one = statistics.median(r["card_examples_per_s"] for r in rows[(kind, 1)])
            many = statistics.median(r["card_examples_per_s"] for r in rows[(kind, nprocs)])
            print(f"whole card (pass + reduction + metrics): 1 process {one:.1f} ex/s, {nprocs} processes "
                  f"{many:.1f} ex/s, speed-up {many / one:.2f}x")
    print(json.dumps({f"{k}-{n}": v for (k, n), v in rows.items()}))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--task", default="rotten-tomatoes")
    p.add_argument("--data", default=None)
    p.add_argument("--cores", default="0,1", help="one core per process (rank i on the i-th)")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--card-batch-size", type=int, default=16)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="training steps left out of the median")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--kinds", default="card,train", help="what to measure: card, train or both")
    p.add_argument("--device", default="cpu")
    p.add_argument("--port", type=int, default=29731)
    p.add_argument("--worker", choices=("card", "train"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    main()
