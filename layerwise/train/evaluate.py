"""Dev-set evaluation: task metrics (``layerwise.data.task_metrics``) and the loss, under ``torch.inference_mode``.

Classification predicts the argmax of the logits, regression the single logit, causal LM greedily generates
after left-padded prompts and is scored by exact match of the final number. The dev set is tokenised once
(:func:`prepare_eval`) so a training run can evaluate many times without re-tokenising.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from layerwise.data.examples import Example
from layerwise.data.tasks import TaskSpec
from layerwise.runtime.errors import DataError

__all__ = ["EvalSet", "eval_sample", "prepare_eval", "run_eval", "evaluate"]


@dataclass
class EvalSet:
    """A tokenised dev set, ready to score repeatedly."""

    task: TaskSpec
    """The task the examples belong to."""
    references: list
    """Labels (classification/regression) or target texts (causal LM), in example order."""
    loss_batches: list[dict]
    """Right-padded batches with labels, for the loss (and the logits of classification/regression)."""
    generation_batches: list[Any]
    """Causal LM only: left-padded prompt batches (``GenerationBatch``) for greedy generation."""
    tokenizer: Any
    """Decodes generations and supplies pad/EOS ids."""
    order: list[int] | None = None
    """The example behind each row of ``loss_batches`` (batches hold examples sorted by length, so that a batch
    pads little); ``None``: example order."""


def eval_sample(examples: Sequence[Example], max_examples: int | None = None) -> list[Example]:
    """The examples an evaluation scores: all of them, or a seeded sample of ``max_examples`` in file order
    (``--eval-max-examples``); baselines are computed on the same sample."""
    examples = list(examples)
    if max_examples is not None and max_examples < len(examples):
        import random

        keep = sorted(random.Random(0).sample(range(len(examples)), max_examples))
        examples = [examples[i] for i in keep]
    return examples


def prepare_eval(examples: Sequence[Example], task: TaskSpec, tokenizer: Any, batch_size: int,
                 max_length: int, max_examples: int | None = None) -> EvalSet:
    """Tokenise ``examples`` (a seeded sample of ``max_examples`` of them, if given) for :func:`run_eval`.

    A sample rather than the first n: files may be sorted by label.
    """
    from layerwise.data.collate import Collator, encode_examples, generation_batches

    examples = eval_sample(examples, max_examples)
    if not examples:
        raise DataError(f"task {task.name!r} has no dev examples to evaluate on")
    collate = Collator(tokenizer, task)
    if task.kind == "causal-lm":
        has_targets = all(e.target is not None for e in examples)
        features = encode_examples(examples, tokenizer, task, max_length) if has_targets else []
        gen = generation_batches(examples, tokenizer, batch_size, max_length)
        references: list = [e.target or "" for e in examples]
    else:
        missing = sum(e.label is None for e in examples)
        if missing:
            raise DataError(f"{missing} dev example(s) of task {task.name!r} have no label to score against")
        features, gen = encode_examples(examples, tokenizer, task, max_length), []
        references = [e.label for e in examples]
    # Longest first, a stable sort: each batch pads to lengths alike (SST-2's dev set: about half the padded
    # tokens of file order), and the first batch shows the memory peak at once.
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    ordered = [features[i] for i in order]
    batches = [collate(ordered[s: s + batch_size]) for s in range(0, len(ordered), batch_size)]
    return EvalSet(task, references, batches, gen, tokenizer, order if features else None)


def run_eval(model: Any, data: EvalSet, gen_max_new_tokens: int = 256, prefix: Any = None,
             prefix_offset: int = 0) -> dict[str, float]:
    """Every metric of the task plus ``loss`` (where labels exist) on ``data``; restores train mode after.

    ``prefix`` (a ``layerwise.train.prefix.cache.PrefixCache``) feeds the loss batches from its evaluation
    cache, where ``data``'s batches start at batch ``prefix_offset``; generation always runs the whole model. A
    model with 16-bit frozen weights (``--dtype``) runs under autocast in their dtype, so its float32 trained
    parameters (adapters, head) meet its 16-bit activations."""
    import torch

    from layerwise.data.task_metrics import compute_metrics
    from layerwise.train.precision import Precision, compute_dtype

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.inference_mode(), Precision(compute_dtype(model), device.type).autocast():
            loss, outputs = _loss_and_outputs(model, data, prefix, prefix_offset)
            if data.task.kind == "causal-lm":
                predictions = _generate(model, data, gen_max_new_tokens)
            else:
                predictions = _in_example_order(torch.cat(outputs).float(), data.order).numpy()
    finally:
        model.train(was_training)
    metrics = compute_metrics(data.task, predictions, data.references)
    if loss is not None:
        metrics["loss"] = loss
    return metrics


def evaluate(model: Any, examples: Sequence[Example], task: TaskSpec, tokenizer: Any, batch_size: int,
             max_length: int, max_examples: int | None = None, gen_max_new_tokens: int = 256) -> dict[str, float]:
    """Score ``model`` on ``examples``: the task's metrics (``task.metrics``) and the mean ``loss``."""
    data = prepare_eval(examples, task, tokenizer, batch_size, max_length, max_examples)
    return run_eval(model, data, gen_max_new_tokens)


def _in_example_order(rows: Any, order: list[int] | None) -> Any:
    """``rows`` (one per loss-batch row) put back in example order."""
    if order is None:
        return rows
    import torch

    out = torch.empty_like(rows)
    out[torch.as_tensor(order)] = rows
    return out


def _loss_and_outputs(model: Any, data: EvalSet, prefix: Any = None, offset: int = 0) -> tuple[float | None, list]:
    """Mean loss over examples (causal LM: over answer tokens) and the logits of each batch, on the CPU."""
    from contextlib import nullcontext

    device = _device(model)
    total, weight, outputs = 0.0, 0, []
    for i, batch in enumerate(data.loss_batches):
        inputs = {k: v.to(device) for k, v in batch.items()}
        with prefix.eval_context(offset + i, inputs) if prefix is not None else nullcontext():
            out = model(**inputs)
        labels = batch["labels"]
        # HF causal LMs shift labels by one: the loss covers labels[:, 1:] that are not ignored.
        n = int((labels[:, 1:] != -100).sum()) if data.task.kind == "causal-lm" else len(labels)
        total, weight = total + float(out.loss) * n, weight + n
        if data.task.kind != "causal-lm":
            outputs.append(out.logits.detach().cpu())
    return (total / weight if weight else None), outputs


def _generate(model: Any, data: EvalSet, max_new_tokens: int) -> list[str]:
    """Greedy continuations of every prompt (new tokens only, special tokens dropped)."""
    from transformers import GenerationConfig

    tok, device = data.tokenizer, _device(model)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None) or tok.eos_token_id
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=tok.pad_token_id, eos_token_id=eos)
    texts: list[str] = []
    for batch in data.generation_batches:
        inputs = {k: v.to(device) for k, v in batch.inputs.items()}
        out = model.generate(**inputs, generation_config=config)  # (B, prompt + new)
        texts.extend(tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return texts


def _device(model: Any) -> Any:
    return next(model.parameters()).device
