"""Benchmark: a Layer-Card selection of half the layers against uniform LoRA, measured side by side.

Targets (issue 4), MiniLM on SST-2, same seeds and steps, the two runs trained in lockstep (one step of
each in turn, each with its own random state, so machine-speed drift falls on both alike): the selection
reaches >= 99% of uniform LoRA's dev score in <= 70% of its training time; layerwise's step time for a
given adapter is within 3% of peft in a plain PyTorch loop on the same layers and batches; and the step-time ratio of dynamic padding to
fixed padding at 128 tokens. Everything is measured in this one run:

    python benchmarks/selection_vs_uniform.py --data ../shared/data/glue/SST-2 --steps 300
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lockstep_args import lockstep_parser, short_openmp_spin


def parse() -> argparse.Namespace:
    p = lockstep_parser(__doc__)
    p.add_argument("--policy", default="top-k")
    p.add_argument("--metric", default="resnorm")
    p.add_argument("--k", type=int, default=None, help="default: half the layers")
    p.add_argument("--samples", type=int, default=256, help="calibration examples for the card")
    p.add_argument("--timing-steps", type=int, default=60, help="steps per loop in the step-time comparisons")
    return p.parse_args()


def train_config(args: argparse.Namespace, steps: int, pad_to: int | None = None):
    from layerwise.train import TrainConfig

    return TrainConfig(steps=steps, lr=args.lr, batch_size=args.batch_size, seed=0, pad_to=pad_to,
                       eval_max_examples=None if steps == args.steps else 32)


def full_runs(args: argparse.Namespace, root: Path, card_dir: Path) -> dict[str, dict]:
    """Train the selection and uniform LoRA with the same steps and seed, in lockstep (one step each in
    turn, so that a drift in machine speed falls on both alike); read their results."""
    from layerwise.settings import DataSource
    from layerwise.train.lockstep import Lockstep
    from layerwise.workflows.train import AdapterChoice, SelectionChoice, train_job

    k = args.k or _num_layers(card_dir) // 2
    options = {"k": k} if args.policy == "top-k" else {}
    choices = {"selected": SelectionChoice(args.policy, args.metric, str(card_dir), **options),
               "uniform": SelectionChoice("all")}

    def job(label: str, choice: SelectionChoice):
        return lambda turn: train_job(args.model, DataSource(args.task, args.data), root / label,
                                      train_config=train_config(args, args.steps), selection=choice,
                                      adapter=AdapterChoice(), overwrite=True, show_progress=False,
                                      callbacks=[turn])

    done = Lockstep(len(choices)).run([job(label, choice) for label, choice in choices.items()])
    out = {}
    for label, (result, chosen) in zip(choices, done):
        out[label] = {"layers": list(chosen.layers), "describe": chosen.describe(), "score": result.final_metrics,
                      "seconds": result.train_seconds, "phases": result.phase_totals,
                      "params": result.trainable_params, "peak": result.peak_memory}
        print(f"  {label}: {chosen.describe()} -> {result.final_metrics}, {result.train_seconds:.1f} s",
              file=sys.stderr, flush=True)
    return out


def _num_layers(card_dir: Path) -> int:
    return len(json.loads((card_dir / "card.json").read_text())["layers"])


def step_times_ours(args, layers: list[int], root: Path, pad_to: int | None = None) -> list[float]:
    """Per-step wall times of layerwise's loop (from its train_log.jsonl), first 5 steps dropped."""
    from layerwise.settings import DataSource
    from layerwise.workflows.train import AdapterChoice, SelectionChoice, train_job

    spec = ",".join(map(str, layers))
    out = root / f"ours-{spec}-{pad_to}-{time.monotonic_ns()}"
    train_job(args.model, DataSource(args.task, args.data), out,
              train_config=train_config(args, args.timing_steps, pad_to),
              selection=SelectionChoice("manual", layers=spec), adapter=AdapterChoice(),
              overwrite=True, show_progress=False)
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [r["step_s"] for r in rows if "step_s" in r][5:]


def step_times_plain(args, layers: list[int]) -> list[float]:
    """peft in a plain PyTorch loop over the very same batches (same data order, collator and seed)."""
    import torch

    from layerwise.adapters.bridge import apply_adapter
    from layerwise.data.collate import Collator, encode_examples
    from layerwise.settings import DataSource
    from layerwise.train.data_order import DataOrder
    from layerwise.workflows.prepare import prepare

    ready = prepare(args.model, DataSource(args.task, args.data), "cpu")
    task, lm = ready.task, ready.loaded
    torch.manual_seed(0)
    model = apply_adapter(lm.model, ready.stack, layers, method="lora", targets="q,v", rank=8)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    features = encode_examples(task.train, lm.tokenizer, task.task, 128)
    order, collate = DataOrder(0, len(features), args.batch_size), Collator(lm.tokenizer, task.task, None)
    times = []
    for n in range(args.timing_steps):
        start = time.perf_counter()
        batch = collate([features[i] for i in order(n)])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.detach().item()  # the same one sync per step as the layerwise loop's loss logging
        times.append(time.perf_counter() - start)
    return times[5:]


def main() -> None:
    args = parse()
    short_openmp_spin()
    import torch

    torch.set_num_threads(args.threads)
    from layerwise.settings import Calibration, DataSource
    from layerwise.workflows.card import make_card

    root = Path(args.out or tempfile.mkdtemp(prefix="layerwise-bench-"))
    make_card(args.model, DataSource(args.task, args.data), root / "card", calibration=Calibration(args.samples),
              overwrite=True, show_progress=False)
    runs = full_runs(args, root, root / "card")
    sel, uni = runs["selected"], runs["uniform"]
    timing = {"ours": [], "plain": []}
    for _ in range(2):  # interleaved, so drift hits both
        timing["ours"] += step_times_ours(args, sel["layers"], root)
        timing["plain"] += step_times_plain(args, sel["layers"])
    padding = {"dynamic": step_times_ours(args, sel["layers"], root),
               "fixed128": step_times_ours(args, sel["layers"], root, pad_to=128)}
    report(args, sel, uni, timing, padding)


def report(args, sel: dict, uni: dict, timing: dict, padding: dict) -> None:
    metric = next(iter(sel["score"]))
    med = {k: statistics.median(v) for k, v in {**timing, **padding}.items()}
    print(f"\n{args.model} on {args.task}: {args.steps} steps, batch {args.batch_size}, lr {args.lr}, seed 0, "
          f"{args.threads} threads")
    print(f"selection: {sel['describe']}")
    print(f"{'run':<10} {'layers':<14} {metric:>9} {'params':>8} {'train s':>8} {'fwd s':>7} {'bwd s':>7} "
          f"{'opt s':>7} {'peak MiB':>9}")
    for name, r in (("selected", sel), ("uniform", uni)):
        ph = r["phases"]
        print(f"{name:<10} {','.join(map(str, r['layers'])):<14} {r['score'][metric]:9.4f} {r['params']:8d} "
              f"{r['seconds']:8.1f} {ph['forward']:7.1f} {ph['backward']:7.1f} {ph['optimizer']:7.1f} "
              f"{r['peak'] / 2**20:9.0f}")
    import torch

    if not torch.cuda.is_available():
        print("(peak MiB on the CPU: the process's resident memory, which holds both runs' models)")
    score_ratio = sel["score"][metric] / uni["score"][metric]
    time_ratio = sel["seconds"] / uni["seconds"]
    parity = med["ours"] / med["plain"]
    print(f"\n{'ratio':<58} {'measured':>8} {'target':>8}")
    for name, value, target, ok in (
            ("selected / uniform dev " + metric, score_ratio, ">= 0.99", score_ratio >= 0.99),
            ("selected / uniform training time", time_ratio, "<= 0.70", time_ratio <= 0.70),
            ("layerwise loop / plain peft loop, median step time", parity, "<= 1.03", parity <= 1.03),
            ("dynamic / fixed-128 padding, median step time", med["dynamic"] / med["fixed128"], "report", True)):
        print(f"{name:<58} {value:8.3f} {target:>8}  {'ok' if ok else 'MISSED'}")
    print(f"(median step: ours {med['ours'] * 1e3:.0f} ms, plain {med['plain'] * 1e3:.0f} ms, dynamic "
          f"{med['dynamic'] * 1e3:.0f} ms, fixed-128 {med['fixed128'] * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
