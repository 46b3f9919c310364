"""The inference cost of a bench method's trained weights (unmerged and merged), measured once per method."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from layerwise.bench.cells import CELLS_DIR, INFERENCE_FILE, cell_dir
from layerwise.bench.methods import CellJob

__all__ = ["ensure_inference"]


def ensure_inference(out: Path, job: CellJob, load: Callable[[], Any], train_config: Any, examples: int,
                     repeats: int, new_tokens: int, say: Callable[[str], None]) -> dict[str, Any]:
    """The method's inference cost, measured on the weights of cell ``job`` (kept in
    ``cells/<method>/inference.json`` and reused while ``examples`` and ``repeats`` are unchanged).
    ``load()`` gives a fresh :class:`~layerwise.workflows.prepare.Prepared` base model."""
    from layerwise.runtime.io import atomic_write_json

    method, seed = job.method, job.train_config.seed
    path = out / CELLS_DIR / method / INFERENCE_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("examples_asked") == examples and saved.get("repeats") == repeats:
            return saved
    say(f"inference: {method} (seed {seed} weights, {examples} examples, unmerged and merged)")
    result = {"seed": seed, "examples_asked": examples, "repeats": repeats,
              **_measure(load(), cell_dir(out, method, seed), job.full, train_config, examples, repeats, new_tokens)}
    atomic_write_json(path, result)
    return result


def _measure(ready: Any, cell: Path, full: bool, cfg: Any, examples: int, repeats: int,
             new_tokens: int) -> dict[str, Any]:
    """Put the cell's trained weights on the base model and time it (:func:`measure_adapter_inference`)."""
    from layerwise.evaluate.inference import measure_adapter_inference

    model = ready.loaded.model
    if full:
        from safetensors.torch import load_model

        load_model(model, str(cell / "adapter" / "model.safetensors"), device=str(next(model.parameters()).device))
    else:
        from peft import PeftModel

        from layerwise.runtime.quiet import peft_wrapping

        with peft_wrapping():
            model = PeftModel.from_pretrained(model, str(cell / "adapter"))
    sample = (ready.task.dev or ready.task.train)[:examples]
    return measure_adapter_inference(model, ready.loaded.tokenizer, ready.task.task, sample, cfg.batch_size, repeats,
                                     max_length=cfg.max_length, new_tokens=new_tokens)
