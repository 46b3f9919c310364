"""Benchmark: the frozen-prefix cache. Uniform LoRA and selections of the top blocks, with and without the
cache, trained side by side in lockstep (one step of each in turn, each with its own random state) on a fixed
training subset for a few epochs.

Targets (issue 14), MiniLM on SST-2, 3 epochs: once the cache is built, an epoch of the top-half selection
takes <= 0.45x of uniform LoRA's epoch and of the top two <= 0.30x; over the 3 epochs including the build,
<= 0.55x and <= 0.40x; the dev score equals the selection's without the cache. Epoch times are the sums of
the logged step times (batch assembly included, evaluation excluded); the build time (hashing the keys
included) comes from each run's ``prefix_cache`` report. SmolLM2 on GSM8K with the top 8 of 30 blocks over 2 epochs: the ratio is reported.

    python benchmarks/prefix_cache.py --data ../shared/data/glue/SST-2 --train-examples 2000 --threads 1
    python benchmarks/prefix_cache.py --model smollm2-135m --task gsm8k --data ../shared/data/gsm8k \\
        --tops 8 --epochs 2 --train-examples 48 --batch-size 4 --max-length 160 --dev-examples 4
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

from lockstep_args import lockstep_parser, short_openmp_spin

TARGETS = {"half": (0.45, 0.55), "top2": (0.30, 0.40)}
"""Per selection: (epoch after the build, whole run with the build) as a share of uniform LoRA's."""


def parse() -> argparse.Namespace:
    p = lockstep_parser(__doc__)
    p.set_defaults(threads=1)
    p.add_argument("--train-examples", type=int, default=2000, help="seeded sample of the training file")
    p.add_argument("--dev-examples", type=int, default=None, help="cap on dev examples (default: all)")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training subset (sets the steps)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--tops", default=None,
                   help="comma list of how many top blocks to select (default: half the blocks and 2)")
    p.add_argument("--cache-dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--gen-max-new-tokens", type=int, default=48, help="causal LM: tokens generated per answer")
    return p.parse_args()


def subset_data(src: Path, dst: Path, n: int) -> Path:
    """A copy of the data folder whose training file keeps a seeded sample of ``n`` examples (header kept)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        lines = f.read_text().splitlines(keepends=True)
        if f.name.startswith("train"):
            header = lines[:1] if f.suffix == ".tsv" else []
            body = lines[len(header):]
            keep = sorted(random.Random(0).sample(range(len(body)), min(n, len(body))))
            lines = header + [body[i] for i in keep]
        (dst / f.name).write_text("".join(lines))
    return dst


def num_blocks(model: str) -> int:
    import transformers

    from layerwise.models import resolve_model

    return int(transformers.AutoConfig.from_pretrained(resolve_model(model).path).num_hidden_layers)


def run_all(args: argparse.Namespace, data: Path, root: Path, selections: dict[str, list[int]]) -> dict[str, dict]:
    """Every (selection, cache on/off) run and uniform LoRA, in lockstep; their results and step times."""
    from layerwise.settings import DataSource
    from layerwise.train import TrainConfig
    from layerwise.train.lockstep import Lockstep
    from layerwise.workflows.train import AdapterChoice, SelectionChoice, train_job

    per_epoch = args.train_examples // args.batch_size
    runs = {"uniform": (SelectionChoice("all"), "off")}
    for name, layers in selections.items():
        spec = ",".join(map(str, layers))
        runs[f"{name}-nocache"] = (SelectionChoice("manual", layers=spec), "off")
        runs[f"{name}-cache"] = (SelectionChoice("manual", layers=spec), "memory")

    def job(label: str, choice, cache: str):
        config = TrainConfig(steps=per_epoch * args.epochs, lr=args.lr, batch_size=args.batch_size, seed=0,
                             max_length=args.max_length, eval_max_examples=args.dev_examples,
                             gen_max_new_tokens=args.gen_max_new_tokens, prefix_cache=cache,
                             prefix_cache_dtype=args.cache_dtype)
        return lambda turn: train_job(args.model, DataSource(args.task, str(data)), root / label, train_config=config,
                                      selection=choice, adapter=AdapterChoice(), overwrite=True,
                                      show_progress=False, callbacks=[turn])

    done = Lockstep(len(runs)).run([job(label, *spec) for label, spec in runs.items()])
    out = {}
    for label, (result, chosen) in zip(runs, done):
        rows = [json.loads(line) for line in result.log_path.read_text().splitlines()]
        steps = [r["step_s"] for r in rows if "step_s" in r]
        epochs = [sum(steps[e * per_epoch:(e + 1) * per_epoch]) for e in range(args.epochs)]
        cache = result.prefix_cache or {}
        out[label] = {"layers": list(chosen.layers), "score": result.final_metrics, "seconds": result.train_seconds,
                      "epochs": epochs, "cache": cache,
                      "build": cache.get("build_seconds", 0.0) + cache.get("key_seconds", 0.0)}
        print(f"  {label}: layers {list(chosen.layers)} -> {result.final_metrics}, {result.train_seconds:.1f} s, "
              f"cache: {cache.get('reason')}", file=sys.stderr, flush=True)
    return out


def report(args: argparse.Namespace, runs: dict[str, dict], selections: dict[str, list[int]]) -> None:
    uni = runs["uniform"]
    metric = next(k for k in uni["score"] if k != "loss")
    uni_epoch = sum(uni["epochs"]) / len(uni["epochs"])
    print(f"\n{args.model} on {args.task}: {args.train_examples} training examples, {args.epochs} epochs of "
          f"{args.train_examples // args.batch_size} steps, batch {args.batch_size}, lr {args.lr}, seed 0, "
          f"{args.threads} thread(s), cache {args.cache_dtype}")
    print(f"{'run':<14} {'layers':<12} {metric:>9} {'train s':>8} {'epochs s':>22} {'build s':>8} {'cache MiB':>9}")
    for label, r in runs.items():
        size = r["cache"].get("bytes", 0) / 2**20 if r["cache"].get("used") else 0.0
        epochs = "/".join(f"{e:.1f}" for e in r["epochs"])
        layers = ",".join(map(str, r["layers"])) if len(r["layers"]) < 8 else f"{r['layers'][0]}..{r['layers'][-1]}"
        print(f"{label:<14} {layers:<12} {r['score'][metric]:9.4f} {r['seconds']:8.1f} {epochs:>22} "
              f"{r['build']:8.2f} {size:9.1f}")
    print(f"\n{'ratio to uniform LoRA':<58} {'measured':>8} {'target':>8}")
    for name in selections:
        cached, plain = runs[f"{name}-cache"], runs[f"{name}-nocache"]
        epoch = (sum(cached["epochs"]) / len(cached["epochs"])) / uni_epoch
        whole = (cached["seconds"] + cached["build"]) / uni["seconds"]
        targets = TARGETS.get(name, (None, None))
        rows = [(f"{name}: epoch without cache", (sum(plain["epochs"]) / len(plain["epochs"])) / uni_epoch, None),
                (f"{name}: epoch with cache (after the build)", epoch, targets[0]),
                (f"{name}: {args.epochs} epochs with cache, build included", whole, targets[1]),
                (f"{name}: dev {metric} with / without cache", cached["score"][metric] / plain["score"][metric],
                 "= 1")]
        for label, value, target in rows:
            if target is None:
                verdict, shown = "", "report"
            elif target == "= 1":
                verdict, shown = ("ok" if cached["score"][metric] == plain["score"][metric] else "DIFFERS"), "= 1"
            else:
                verdict, shown = ("ok" if value <= target else "MISSED"), f"<= {target:.2f}"
            print(f"{label:<58} {value:8.3f} {shown:>8}  {verdict}")


def main() -> None:
    args = parse()
    short_openmp_spin()
    import torch

    torch.set_num_threads(args.threads)
    root = Path(args.out or tempfile.mkdtemp(prefix="layerwise-prefix-cache-"))
    data = subset_data(Path(args.data), root / "data", args.train_examples)
    blocks = num_blocks(args.model)
    tops = [int(t) for t in args.tops.split(",")] if args.tops else [blocks // 2, 2]
    selections = {("half" if t == blocks // 2 else "top2" if t == 2 else f"top{t}"): list(range(blocks - t, blocks))
                  for t in tops}
    runs = run_all(args, data, root, selections)
    report(args, runs, selections)


if __name__ == "__main__":
    main()
