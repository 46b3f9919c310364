"""Benchmark: peak memory of the Layer Card in float32 and bfloat16 against a plain bfloat16 forward+backward,
and the card's projected peak (``layerwise.card.probe.plan.projected_peak``) for the same shapes and for Llama-3-8B's.

Each measurement runs in its own fresh process (the kernel's RSS high-water mark, ``layerwise.runtime.memory``): the
card's probe pass (default metrics) on the model loaded in that dtype, or the same batches through the bf16
model with ``loss.backward()`` into every parameter (what a plain training step without an optimizer costs).
Reported: the process's peak during the region and its RSS at the region's start (weights, tokenizer, torch).
Example (one core, small sample):

    python benchmarks/card_memory.py --model smollm2-135m --task gsm8k --data ../shared/data/gsm8k \
        --samples 16 --batch-size 4 --max-length 128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

MODES = ("card-float32", "card-bfloat16", "forward-backward-bfloat16")
GIB = 2**30


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--data", default="../shared/data/gsm8k")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--metrics", default="default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", choices=MODES, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(args: argparse.Namespace) -> dict:
    """One measurement in this process; returns the region's peak and start RSS and the batches' shape."""
    import torch

    from layerwise.runtime.memory import PeakMemory
    from layerwise.card.profiling import profile_layers
    from layerwise.settings import Calibration, DataSource, ModelSource
    from layerwise.workflows.card import calibration_batches
    from layerwise.workflows.prepare import prepare

    torch.set_num_threads(args.threads)
    dtype = args.worker.rsplit("-", 1)[1]
    ready = prepare(ModelSource(args.model, dtype=dtype), DataSource(args.task, args.data,
                                                                     max_length=args.max_length), "cpu")
    batches = calibration_batches(ready.task, ready.loaded.tokenizer,
                                  Calibration(args.samples, 0, args.batch_size, args.max_length))
    model = ready.loaded.model
    with PeakMemory() as mem:
        if args.worker.startswith("card"):
            profile_layers(model, batches, args.metrics, stack=ready.stack, show_progress=False)
        else:
            model.eval()
            for batch in batches:
                model(**batch).loss.backward()
                model.zero_grad(set_to_none=True)
    cfg = model.config
    kv = cfg.num_key_value_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    shapes = dict(hidden=cfg.hidden_size, num_blocks=cfg.num_hidden_layers, mlp=cfg.intermediate_size, kv_dim=kv,
                  vocab=cfg.vocab_size, tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
                  batch=args.batch_size, tokens=max(int(b["input_ids"].shape[1]) for b in batches))
    return {"peak": mem.peak, "start": mem.start, "shapes": shapes}


def projections(args: argparse.Namespace, shapes: dict) -> dict:
    from layerwise.card.metrics import get_metrics
    from layerwise.card.probe.plan import projected_peak

    chosen = get_metrics(args.metrics)
    stats = {s for m in chosen for s in m.statistics}
    cross = any(m.name == "coupling" for m in chosen)
    llama3 = dict(hidden=4096, num_blocks=32, mlp=14336, kv_dim=1024, vocab=128256, dtype_bytes=2, batch=8,
                  tokens=128, examples=256)  # the card's default --samples
    return {args.model + " float32": projected_peak(**shapes, statistics=stats, dtype_bytes=4),
            args.model + " bfloat16": projected_peak(**shapes, statistics=stats, dtype_bytes=2),
            "Llama-3-8B bf16, exact": projected_peak(**llama3, statistics=stats),
            "Llama-3-8B bf16, default --max-stat-memory (2 GiB)":
                projected_peak(**llama3, statistics=stats, budget=2 << 30, cross_block=cross)}


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return {}
    measured = {}
    for mode in MODES:
        cmd = [sys.executable, __file__, "--worker", mode, "--model", args.model, "--task", args.task, "--data",
               args.data, "--samples", str(args.samples), "--batch-size", str(args.batch_size), "--max-length",
               str(args.max_length), "--metrics", args.metrics, "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        measured[mode] = json.loads(out.strip().splitlines()[-1])
    base = measured["forward-backward-bfloat16"]["peak"]
    print(f"{args.model} / {args.task}: {args.samples} samples, batch {args.batch_size}, up to {args.max_length} "
          f"tokens, metrics {args.metrics}, {args.threads} thread(s)")
    print("| run | peak RSS (MiB) | RSS at start (MiB) | peak / bf16 forward+backward |")
    print("|---|---:|---:|---:|")
    for mode, m in measured.items():
        print(f"| {mode} | {m['peak'] / 2**20:.0f} | {m['start'] / 2**20:.0f} | {m['peak'] / base:.2f} |")
    proj = projections(args, measured["card-float32"]["shapes"])
    print("\nprojected card peak (layerwise.card.probe.plan.projected_peak), GiB:")
    print("| shapes | weights | weight grads | activations | statistics | passes | total |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, p in proj.items():
        print(f"| {name} | {p['weights'] / GIB:.2f} | {p['weight_grads'] / GIB:.2f} | {p['activations'] / GIB:.2f} | "
              f"{p['statistics'] / GIB:.2f} | {p['passes']} | {p['total'] / GIB:.2f} |")
    return {"measured": measured, "projected": proj}


if __name__ == "__main__":
    main()
