"""Benchmark: the Layer Card probe against plain passes over the same batches, measured in one run.

Targets (issue 3): all metrics but weightdelta in one pass <= 1.3x a plain forward+backward; forward-only
metrics (actnorm, cka, act_energy) <= 1.1x a plain forward; peak memory <= 1.2x a plain forward+backward.

Each mode runs in its own fresh process (so each peak-memory reading is that mode's alone), modes are
interleaved over repeats, and the median time is reported. Example:

    python benchmarks/card_overhead.py --model minilm --task sst2 --data ../shared/data/glue/SST-2 --samples 256
    python benchmarks/card_overhead.py --model smollm2-135m --task gsm8k --data ../shared/data/gsm8k \
        --samples 64 --batch-size 8 --max-length 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODES = ("forward", "probe-forward", "forward-backward", "probe-all")
FORWARD_METRICS = "actnorm,cka,act_energy"
ALL_BUT_WEIGHTDELTA = "actnorm,gradnorm,fisher,taylor,cka,resnorm,act_energy,coupling,cost"


def worker(args: argparse.Namespace) -> dict:
    """Run one mode once (after a warm-up batch) and report seconds and peak memory."""
    import torch

    from layerwise.runtime.device import resolve_device
    from layerwise.runtime.memory import PeakMemory
    from layerwise.card.profiling import profile_layers
    from layerwise.settings import Calibration, DataSource
    from layerwise.workflows.card import calibration_batches

    torch.set_num_threads(args.threads)
    task = DataSource(args.task, args.data).load()
    model, tokenizer = _random_model(args.model, task.task) if args.random_weights else _pretrained(args, task)
    device = resolve_device(args.device)
    model = model.to(device)
    batches = calibration_batches(task, tokenizer, Calibration(args.samples, 0, args.batch_size, args.max_length))
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    run = _mode_fn(args.mode, model, batches, device, profile_layers)
    run(batches[:1])  # warm-up: allocator, kernels, lazy inits
    if device.type == "cuda":
        torch.cuda.synchronize()
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        card = run(batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"mode": args.mode, "seconds": seconds, "peak": mem.peak, "start": mem.start,
            "probe_seconds": card.probe["seconds"] if card is not None else None,
            "batches": len(batches), "device": str(device)}


def _pretrained(args: argparse.Namespace, task):
    from layerwise.settings import DataSource
    from layerwise.workflows.prepare import prepare

    loaded = prepare(args.model, DataSource(args.task, args.data), "cpu", task=task).loaded
    return loaded.model, loaded.tokenizer


def _random_model(folder: str, task):
    """The architecture of ``folder``'s config.json with random weights: same compute, no weight files
    (for timing on a machine the weights cannot be copied to)."""
    import transformers

    from layerwise.models import resolve_model
    from layerwise.models.loading import load_tokenizer

    source = resolve_model(folder)
    cfg = transformers.AutoConfig.from_pretrained(source.path)
    if task.head == "causal-lm":
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    else:
        cfg.num_labels = task.num_labels or 1
        model = transformers.AutoModelForSequenceClassification.from_config(cfg)
    tokenizer = load_tokenizer(source)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def _mode_fn(mode: str, model, batches, device, profile_layers):
    import torch

    def forward(bs):
        with torch.inference_mode():
            for b in bs:
                model(**{k: v for k, v in b.items() if k != "labels"})

    def forward_backward(bs):
        for b in bs:
            model(**b).loss.backward()
            model.zero_grad(set_to_none=True)

    def probe(metrics):
        return lambda bs: profile_layers(model, bs, metrics, device=device, show_progress=False, n_boot=50)

    return {"forward": forward, "forward-backward": forward_backward,
            "probe-forward": probe(FORWARD_METRICS), "probe-all": probe(ALL_BUT_WEIGHTDELTA)}[mode]


def orchestrate(args: argparse.Namespace) -> None:
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(args.repeats):
        for mode in MODES:
            cmd = [sys.executable, __file__, "--worker", "--mode", mode] + _passthrough(args)
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "LAYERWISE_PROGRESS": "0"})
            if out.returncode != 0:
                sys.exit(f"worker {mode} failed:\n{out.stderr[-3000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[mode].append(res)
            print(f"  repeat {r} {mode:<17} {res['seconds']:7.2f} s  peak {res['peak'] / 2**20:7.0f} MiB",
                  file=sys.stderr, flush=True)
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, list[dict]]) -> None:
    t = {m: statistics.median(r["seconds"] for r in rs) for m, rs in results.items()}
    peak = {m: statistics.median(r["peak"] for r in rs) for m, rs in results.items()}
    probe = {m: statistics.median(r.get("probe_seconds") or 0.0 for r in rs) for m, rs in results.items()}
    rows = [("forward-only metrics vs plain forward (time)", t["probe-forward"] / t["forward"], 1.10),
            ("all metrics vs plain forward+backward (time)", t["probe-all"] / t["forward-backward"], 1.30),
            ("all metrics vs plain forward+backward (peak memory)", peak["probe-all"] / peak["forward-backward"], 1.20)]
    dev = results["forward"][0]["device"]
    print(f"\n{args.model} on {args.task}: {args.samples} examples, batch {args.batch_size}, "
          f"{results['forward'][0]['batches']} batches, {dev}, {args.threads} threads, median of {args.repeats}")
    print(f"{'mode':<18} {'seconds':>8} {'of which pass':>14} {'peak MiB':>9}")
    for m in MODES:
        inner = f"{probe[m]:14.2f}" if probe[m] else f"{'':>14}"
        print(f"{m:<18} {t[m]:8.2f} {inner} {peak[m] / 2**20:9.0f}")
    print("(seconds: the whole call, card included; 'of which pass': the probe's streaming pass alone)")
    print(f"\n{'ratio':<55} {'measured':>8} {'target':>7}")
    for name, ratio, target in rows:
        print(f"{name:<55} {ratio:8.3f} {'<=' + str(target):>7}  {'ok' if ratio <= target else 'MISSED'}")


def _passthrough(args: argparse.Namespace) -> list[str]:
    out = ["--model", args.model, "--task", args.task, "--samples", str(args.samples), "--batch-size",
           str(args.batch_size), "--max-length", str(args.max_length), "--threads", str(args.threads),
           "--device", args.device]
    out += ["--random-weights"] if args.random_weights else []
    return out + (["--data", args.data] if args.data else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--task", default="sst2")
    p.add_argument("--data", default=None)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--random-weights", action="store_true",
                   help="--model is a folder with config.json and tokenizer only: time its architecture")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
