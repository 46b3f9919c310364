"""``layerwise bench``: every method on the same data, steps and seeds, in one table (Act-LoRA Tables 4-7)."""

from __future__ import annotations

import argparse

from layerwise.commands.common import add_data_flags, add_model_flags, columns_from_args
from layerwise.io import slug

__all__ = ["add_parser", "run", "parse_int_list", "list_methods"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark fine-tuning methods on the same data, steps and seeds",
                       description="Train every method x seed (full fine-tuning, LoRA and its variants, card-based "
                       "layer selections, La-LoRA) with the same data, steps and seeds; report score (mean ± std), "
                       "trainable parameters, time per phase, peak memory and inference latency (adapter "
                       "unmerged and merged), each against uniform LoRA. An existing --out is resumed: finished "
                       "cells are not trained again.")
    add_model_flags(p)
    add_data_flags(p)
    g = p.add_argument_group("bench")
    g.add_argument("--methods", default="all",
                   help="comma list of bench methods, or 'all' (default); actnorm-top takes each --k, "
                   "actnorm-top2 one k; see --list-methods")
    g.add_argument("--seeds", default="0,1,2", help="training seeds, e.g. 0,1,2 or 0-4 (default 0,1,2)")
    g.add_argument("--k", default="1,2,3", help="k values of actnorm-top{k} (default 1,2,3)")
    g.add_argument("--steps", type=int, default=150, help="optimizer steps of every cell (default 150)")
    g.add_argument("--lr", type=float, default=2e-3,
                   help="peak learning rate of every adapter cell (default 2e-3: at 5e-4 most methods stayed at "
                   "the majority class after 150 MiniLM steps on SST-2)")
    g.add_argument("--full-lr", type=float, default=1e-4,
                   help="peak learning rate of full fine-tuning (default 1e-4; full fine-tuning wants a far "
                   "smaller one than adapters)")
    g.add_argument("--batch-size", type=int, default=16, help="examples per step and inference batch (default 16)")
    g.add_argument("--group-by-length", type=int, default=0, metavar="W",
                   help="batch examples of similar length in every cell (windows of W batches; default 0: off)")
    g.add_argument("--rank", type=int, default=8, help="adapter rank (La-LoRA: r_max) (default 8)")
    g.add_argument("--targets", default="q,v", help="projections adapted: q,v (default), attn, mlp, all-linear")
    g.add_argument("--eval-max-examples", type=int, default=None, help="cap on dev examples per evaluation")
    g.add_argument("--inference-examples", type=int, default=64,
                   help="dev examples timed for inference, 0 skips it (default 64)")
    g.add_argument("--inference-repeats", type=int, default=3, help="timed passes, the median is kept (default 3)")
    g.add_argument("--new-tokens", type=int, default=16,
                   help="causal LM: tokens generated per prompt when timing TTFT and ITL (default 16)")
    g.add_argument("--samples", type=int, default=256, help="calibration examples of the Layer Card (default 256)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument("--out", default=None,
                   help="output folder, resumed if it exists (default runs/bench-<model>-<task>)")
    g.add_argument("--overwrite", action="store_true", help="delete the bench's earlier results in --out first")
    g.add_argument("--list-methods", action="store_true", help="list the bench methods and exit")
    p.set_defaults(run=run)


def parse_int_list(spec: str, flag: str) -> list[int]:
    """``0,1,2`` or ``0-2`` (or a mix) -> [0, 1, 2]; errors name ``flag``."""
    from layerwise.errors import ConfigError

    out: list[int] = []
    try:
        for part in (p.strip() for p in spec.split(",")):
            if part:
                a, sep, b = part.partition("-")
                out += list(range(int(a), int(b) + 1)) if sep else [int(a)]
    except ValueError as err:
        raise ConfigError(f"{flag} takes integers like 0,1,2 or 0-2, got {spec!r}") from err
    if not out:
        raise ConfigError(f"{flag} is empty; give integers like 0,1,2")
    return list(dict.fromkeys(out))


def list_methods() -> str:
    """The registered bench methods, one a line."""
    from layerwise.workflows.bench import BENCH_METHODS

    rows = [f"{'method':<17} {'card':<5} description"]
    for m in BENCH_METHODS.values():
        rows.append(f"{m.name:<17} {'yes' if m.needs_card else '':<5} {m.description}")
    return "\n".join(rows + ["{k}: one method per --k value (actnorm-top expands to every --k)"])


def run(args: argparse.Namespace) -> int:
    if args.list_methods:
        print(list_methods())
        return 0
    from layerwise.bench_render import render_bench_md
    from layerwise.train import TrainConfig
    from layerwise.workflows.bench import run_bench
    from layerwise.workflows.card import CalibrationSpec

    out = args.out or f"runs/bench-{slug(args.model)}-{slug(args.task)}"
    config = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length,
                         eval_max_examples=args.eval_max_examples, group_by_length=args.group_by_length)
    calibration = CalibrationSpec(args.samples, 0, min(16, args.samples), args.max_length)
    result = run_bench(args.model, args.task, args.data, out, methods=args.methods,
                       seeds=parse_int_list(args.seeds, "--seeds"), train_config=config,
                       ks=parse_int_list(args.k, "--k"), rank=args.rank, targets=args.targets,
                       calibration=calibration, inference_examples=args.inference_examples,
                       inference_repeats=args.inference_repeats, inference_new_tokens=args.new_tokens,
                       columns=columns_from_args(args), regression=args.regression, cache_dir=args.cache_dir,
                       trust_remote_code=args.trust_remote_code, layers_path=args.layers_path, device=args.device,
                       overwrite=args.overwrite, full_lr=args.full_lr)
    print(render_bench_md(result))
    print("wrote " + ", ".join(result["files"].values()))
    return 0
