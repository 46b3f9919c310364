"""Benchmark: does a bfloat16 Layer Card rank the blocks like the float32 card of the same model and batches?

Issue 15's target: Kendall tau between the two cards' values >= 0.85 for actnorm, cka, act_energy, gradnorm,
fisher and resnorm, and for every metric at least that metric's own bootstrap stability (the mean Kendall tau
of its ranking when the calibration batches are resampled, from the float32 card). The model is loaded once in
float32, carded, cast to bfloat16 in place and carded again on the same batches (bf16 runs on the CPU).
Example:

    python benchmarks/bf16_card.py --model minilm --task sst2 --data ../shared/data/glue/SST-2 --samples 128
    python benchmarks/bf16_card.py --model smollm2-135m --task gsm8k --data ../shared/data/gsm8k \
        --samples 32 --batch-size 8 --max-length 128
"""

from __future__ import annotations

import argparse
import json
import time

TARGET = ("actnorm", "cka", "act_energy", "gradnorm", "fisher", "resnorm")
"""The metrics with a fixed tau target (0.85)."""


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--task", default="sst2")
    p.add_argument("--data", default=None)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--metrics", default="default", help="card metrics (default: the card's default set)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)

    import torch
    from scipy.stats import kendalltau

    from layerwise.card.profiling import profile_layers
    from layerwise.settings import Calibration, DataSource, ModelSource
    from layerwise.workflows.card import calibration_batches
    from layerwise.workflows.prepare import prepare

    torch.set_num_threads(args.threads)
    ready = prepare(ModelSource(args.model, dtype="float32"), DataSource(args.task, args.data,
                                                                          max_length=args.max_length), "cpu")
    batches = calibration_batches(ready.task, ready.loaded.tokenizer,
                                  Calibration(args.samples, 0, args.batch_size, args.max_length))
    cards, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        ready.loaded.model.to(getattr(torch, dtype))
        start = time.perf_counter()
        cards[dtype] = profile_layers(ready.loaded.model, batches, args.metrics, name=args.model, stack=ready.stack,
                                      show_progress=False)
        seconds[dtype] = time.perf_counter() - start
    fp32, bf16 = cards["float32"], cards["bfloat16"]
    rows = []
    for name in fp32.metric_names:
        a, b = fp32.values(name), bf16.values(name)
        tau = 1.0 if len(set(a)) == 1 and a == b else float(kendalltau(a, b).statistic)
        stab32 = (fp32.metric(name).get("stability") or {}).get("kendall_tau_mean")
        stab16 = (bf16.metric(name).get("stability") or {}).get("kendall_tau_mean")
        floor = max(0.85 if name in TARGET else -1.0, stab32 if stab32 is not None else -1.0)
        rows.append({"metric": name, "tau_bf16_fp32": tau, "stability_fp32": stab32, "stability_bf16": stab16,
                     "target": floor, "met": tau >= floor - 1e-12, "values_fp32": a, "values_bf16": b})
    result = {"model": args.model, "task": args.task, "samples": args.samples, "batch_size": args.batch_size,
              "max_length": args.max_length, "threads": args.threads, "seconds": seconds, "rows": rows}
    print(f"{args.model} / {args.task}: {args.samples} samples, batch {args.batch_size}, up to {args.max_length} "
          f"tokens; card {seconds['float32']:.1f} s fp32, {seconds['bfloat16']:.1f} s bf16")
    print("| metric | tau(bf16, fp32) | bootstrap tau fp32 | bootstrap tau bf16 | target | met |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        def f(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"
        print(f"| {r['metric']} | {f(r['tau_bf16_fp32'])} | {f(r['stability_fp32'])} | {f(r['stability_bf16'])} | "
              f"{f(r['target']) if r['target'] > -1 else 'n/a'} | {'yes' if r['met'] else 'NO'} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
