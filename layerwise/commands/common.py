"""Flags shared by several subcommands (model, data, output), so they read the same everywhere."""

from __future__ import annotations

import argparse

__all__ = ["add_model_flags", "add_data_flags", "add_selection_flags", "add_adapter_flags", "add_training_flags",
           "selection_from_args", "adapter_from_args", "train_config_from_args", "columns_from_args",
           "DEFAULT_MODEL", "DEFAULT_TASK"]

DEFAULT_MODEL = "minilm"
DEFAULT_TASK = "rotten-tomatoes"


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """--model, --cache-dir, --trust-remote-code, --layers-path."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="local directory, .gguf file, bundled alias (see `layerwise models`) or hub id "
                   f"org/name (default: {DEFAULT_MODEL})")
    g.add_argument("--cache-dir", default=None,
                   help="where converted GGUF models are kept (default: $LAYERWISE_CACHE or ~/.cache/layerwise)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow a hub model's own Python code to run (off by default)")
    g.add_argument("--layers-path", default=None,
                   help="dotted path to the ModuleList of transformer blocks, for architectures "
                   "layerwise does not recognise (e.g. model.decoder.layers)")


def add_data_flags(p: argparse.ArgumentParser) -> None:
    """--task, --data and the column flags for CSV/JSONL."""
    g = p.add_argument_group("data")
    g.add_argument("--task", default=DEFAULT_TASK,
                   help="cola, sst2, mrpc, stsb, qqp, mnli, mnli-mm, qnli, rte, wnli, gsm8k, rotten-tomatoes "
                   f"(embedded), csv, jsonl or hf:<name>[:<config>] (default: {DEFAULT_TASK})")
    g.add_argument("--data", default=None,
                   help="folder with the task's files (GLUE tsv, GSM8K jsonl) or a CSV/JSONL file")
    g.add_argument("--text-column", default=None, help="CSV/JSONL column holding the text")
    g.add_argument("--pair-column", default=None, help="CSV/JSONL column holding the second text of a pair task")
    g.add_argument("--label-column", default=None, help="CSV/JSONL column holding the label")
    g.add_argument("--regression", action="store_true", help="CSV/JSONL labels are real numbers (regression)")
    g.add_argument("--max-length", type=int, default=128, help="truncate examples to this many tokens (default 128)")


def add_selection_flags(p: argparse.ArgumentParser, default_policy: str = "all") -> None:
    """--policy and its options, --metric, --card."""
    g = p.add_argument_group("layer selection")
    g.add_argument("--policy", default=default_policy,
                   help="top-k, threshold, ratio, budget, pareto, all (uniform LoRA) or manual "
                   f"(default: {default_policy}); see --list-policies")
    g.add_argument("--metric", default=None, help="card metric the policy ranks by (each policy has a default)")
    g.add_argument("--card", default=None, help="card.json made for this model (made on the fly if needed)")
    g.add_argument("--k", type=int, default=None, help="top-k: number of layers")
    g.add_argument("--share", type=float, default=None, help="threshold: share of total importance, in (0, 1]")
    g.add_argument("--ratio", type=float, default=None, help="ratio: fraction of layers kept (CKA method: 0.5)")
    g.add_argument("--exclude-first", action="store_true", default=None, help="ratio: never pick layer 0")
    g.add_argument("--max-params", type=int, default=None, help="budget: cap on trainable adapter parameters")
    g.add_argument("--max-flops", type=float, default=None, help="budget: cap on per-token training FLOPs")
    g.add_argument("--objective", choices=("performance", "cost", "balanced"), default=None,
                   help="pareto: which point of the importance/cost front (default balanced)")
    g.add_argument("--layers", default=None, help="manual: layers such as 3,4,5 or 2-5")


def selection_from_args(args: argparse.Namespace):
    from layerwise.workflows.train import SelectionChoice

    max_flops = int(args.max_flops) if args.max_flops is not None else None
    options = {"k": args.k, "share": args.share, "ratio": args.ratio, "exclude_first": args.exclude_first,
               "max_params": args.max_params, "max_flops": max_flops, "objective": args.objective,
               "layers": args.layers}
    return SelectionChoice(args.policy, args.metric, options, args.card)


def add_adapter_flags(p: argparse.ArgumentParser) -> None:
    """--method, --targets, --rank, --alpha, --ranks, --dropout and the La-LoRA flags of ``--ranks adaptive``."""
    g = p.add_argument_group("adapter")
    g.add_argument("--method", default="lora",
                   help="lora, dora, rslora, pissa, loha, lokr, vera, ia3 or adalora (default lora)")
    g.add_argument("--targets", default="q,v", help="q,v (default), attn, mlp, all-linear, or a comma list of roles")
    g.add_argument("--rank", type=int, default=8, help="adapter rank (default 8)")
    g.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2 x rank)")
    g.add_argument("--ranks", default=None,
                   help="per-layer ranks, e.g. 3:16,4:8 (layers must be selected), or 'adaptive': La-LoRA ranks "
                   "that adapt per block during training (--method lora)")
    g.add_argument("--dropout", type=float, default=0.0, help="adapter dropout (default 0)")
    a = p.add_argument_group("adaptive ranks (--ranks adaptive, La-LoRA)")
    a.add_argument("--r-max", type=int, default=None, help="largest rank of a block (default: --rank)")
    a.add_argument("--gamma", type=float, default=None,
                   help="budget growth rate (Eq. 5), > 0; default 2.0: the budget ends near "
                   "L * (layer-value growth) ** gamma, e.g. mean rank ~2 of 8 after 150 MiniLM steps at lr 5e-4")
    a.add_argument("--rank-interval", type=int, default=1, help="reallocate ranks every N steps (default 1)")
    a.add_argument("--no-car", dest="car", action="store_false",
                   help="start the budget at r_max per block instead of 1 (the paper's ablation)")
    a.add_argument("--no-fidelity", dest="fidelity", action="store_false",
                   help="contributions without the fidelity weights (the paper's ablation)")
    a.add_argument("--contribution", choices=("norm", "fisher"), default="norm",
                   help="truncated norms (default) or accumulated Fisher information")
    a.add_argument("--rank-scale", choices=("rmax", "ri"), default="rmax",
                   help="LoRA scaling alpha/r_max (default, the paper's) or alpha/r_i")


def adapter_from_args(args: argparse.Namespace):
    from layerwise.workflows.train import AdapterChoice, parse_ranks

    return AdapterChoice(args.method, args.targets, args.rank, args.alpha, parse_ranks(args.ranks), args.dropout,
                         r_max=args.r_max, gamma=args.gamma, rank_interval=args.rank_interval, car=args.car,
                         fidelity=args.fidelity, contribution=args.contribution, rank_scale=args.rank_scale)


def add_training_flags(p: argparse.ArgumentParser, default_steps: int = 150) -> None:
    """--steps, --lr and the rest of TrainConfig, plus --resume/--overwrite."""
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=default_steps, help=f"optimizer steps (default {default_steps})")
    g.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    g.add_argument("--batch-size", type=int, default=16, help="examples per micro-batch (default 16)")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    g.add_argument("--warmup-ratio", type=float, default=0.06, help="share of steps of linear warm-up (0.06)")
    g.add_argument("--scheduler", choices=("linear", "cosine", "constant"), default="linear")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping, 0 = off (default 1.0)")
    g.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (default: at the end)")
    g.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (default: at the end)")
    g.add_argument("--early-stopping", type=int, default=0, help="patience in evaluations, 0 = off")
    g.add_argument("--eval-max-examples", type=int, default=None, help="cap on dev examples per evaluation")
    g.add_argument("--gen-max-new-tokens", type=int, default=256, help="causal LM: tokens generated per answer")
    g.add_argument("--train-seed", type=int, default=0, help="seed of adapter init and data order (default 0)")
    g.add_argument("--group-by-length", type=int, default=0, metavar="W",
                   help="batch examples of similar length: sort by length within windows of W batches, then "
                   "shuffle the batches; less padding, faster steps (default 0: off; e.g. 50)")
    g.add_argument("--prefix-dropout", action="store_true",
                   help="keep dropout in the frozen blocks below the lowest adapted block (off by default)")
    g.add_argument("--prefix-cache", choices=("off", "memory", "disk", "auto"), default="auto",
                   help="compute the frozen blocks below the lowest adapter once per example and train only the "
                   "blocks above (default auto: when the run makes more than one pass and the cache fits)")
    g.add_argument("--prefix-cache-dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="storage dtype of the prefix cache (float32 exact; 16-bit halves it)")
    g.add_argument("--prefix-cache-dir", default=None,
                   help="folder of the disk prefix cache, reusable by runs over the same prefix "
                   "(default: OUT/prefix_cache)")
    g.add_argument("--resume", action="store_true", help="continue from --out's checkpoint at its exact step")
    g.add_argument("--overwrite", action="store_true", help="replace the files of an existing --out folder")


def train_config_from_args(args: argparse.Namespace):
    from layerwise.train import TrainConfig

    return TrainConfig(steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
                       scheduler=args.scheduler, batch_size=args.batch_size, grad_accum=args.grad_accum,
                       max_length=args.max_length, eval_every=args.eval_every, save_every=args.save_every,
                       early_stopping=args.early_stopping, seed=args.train_seed, max_grad_norm=args.max_grad_norm,
                       eval_max_examples=args.eval_max_examples, gen_max_new_tokens=args.gen_max_new_tokens,
                       group_by_length=args.group_by_length, prefix_dropout=args.prefix_dropout,
                       prefix_cache=args.prefix_cache, prefix_cache_dtype=args.prefix_cache_dtype,
                       prefix_cache_dir=args.prefix_cache_dir)


def columns_from_args(args: argparse.Namespace) -> dict:
    return {"text_column": args.text_column, "pair_column": args.pair_column, "label_column": args.label_column}
