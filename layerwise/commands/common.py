"""Flags shared by several subcommands (model, data, output), so they read the same everywhere."""

from __future__ import annotations

import argparse

__all__ = ["add_model_flags", "add_data_flags", "DEFAULT_MODEL", "DEFAULT_TASK"]

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
