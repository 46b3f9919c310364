"""Inference cost of a (fine-tuned) model: latency per example and throughput, and for generation the time to
first token (TTFT) and the inter-token latency (ITL), with a peft adapter unmerged and merged (La-LoRA's
Table 13).

Every figure is the median over ``repeats`` timed passes over the same examples, after ``warmup`` untimed
passes; on a GPU each pass ends with ``torch.cuda.synchronize`` so the time covers the work, not its launch.

- Classification/regression: one forward pass per batch. ``latency_ms`` is the pass time over all examples
  divided by their number (per example, at ``batch_size``), ``throughput`` examples per second.
- Causal LM: greedy generation of exactly ``new_tokens`` tokens per prompt (EOS is held back until then). A
  logits processor stamps the clock when each new token's logits are ready: TTFT is the time from the
  call of ``generate`` to the first stamp (the prompt's prefill), ITL the mean gap between later stamps.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from layerwise.data.examples import Example
from layerwise.data.tasks import TaskSpec
from layerwise.runtime.errors import ConfigError, DataError

__all__ = ["measure_inference", "measure_adapter_inference"]


def measure_inference(model: Any, tokenizer: Any, task: TaskSpec, examples: Sequence[Example], batch_size: int = 8,
                      repeats: int = 3, *, max_length: int = 128, new_tokens: int = 16,
                      warmup: int = 1) -> dict[str, Any]:
    """Latency and throughput of ``model`` on ``examples`` (median of ``repeats``); decoders add TTFT and ITL.

    Returns ``{kind, examples, batch_size, repeats, device, seconds, latency_ms, throughput}`` plus, for a
    causal-LM task, ``{new_tokens, ttft_ms, itl_ms, tokens_per_s}``. The model's train/eval mode is restored.
    """
    import torch

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1 for the inference measurement, got {batch_size}")
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"inference repeats must be >= 1 and warm-up passes >= 0, got {repeats} and {warmup}")
    examples = list(examples)
    if not examples:
        raise DataError(f"task {task.name!r} has no examples to measure inference on")
    device = next(model.parameters()).device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if task.kind == "causal-lm":
                figures = _generation(model, tokenizer, examples, batch_size, max_length, new_tokens, repeats,
                                      warmup, sync)
            else:
                figures = _forward(model, tokenizer, task, examples, batch_size, max_length, repeats, warmup, sync)
    finally:
        model.train(was_training)
    n = len(examples)
    return {"kind": task.kind, "examples": n, "batch_size": batch_size, "repeats": repeats, "device": str(device),
            "seconds": figures["seconds"], "latency_ms": 1000.0 * figures["seconds"] / n,
            "throughput": n / figures["seconds"] if figures["seconds"] > 0 else None,
            **{k: v for k, v in figures.items() if k != "seconds"}}


def measure_adapter_inference(model: Any, tokenizer: Any, task: TaskSpec, examples: Sequence[Example],
                              batch_size: int = 8, repeats: int = 3, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure_inference` of a peft model as it is (``unmerged``), then after ``merge_and_unload``
    (``merged``). A plain model has nothing to merge: ``merged`` is None. A method peft cannot merge
    leaves ``merged`` None with the reason in ``merge_error``. ``model`` is consumed (merged in place)."""
    out: dict[str, Any] = {"unmerged": measure_inference(model, tokenizer, task, examples, batch_size, repeats,
                                                         **kwargs), "merged": None, "merge_error": None}
    if not hasattr(model, "merge_and_unload"):
        out["merge_error"] = "no adapter to merge"
        return out
    try:
        merged = model.merge_and_unload()
    except (NotImplementedError, ValueError, TypeError, AttributeError) as err:
        out["merge_error"] = f"{type(err).__name__}: {err}"
        return out
    out["merged"] = measure_inference(merged, tokenizer, task, examples, batch_size, repeats, **kwargs)
    return out


def _timed(run: Callable[[], Any], repeats: int, warmup: int, sync: Callable[[], None]) -> list[tuple[float, Any]]:
    """(seconds, what ``run`` returned) of each timed pass, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
        sync()
    out = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        value = run()
        sync()
        out.append((time.perf_counter() - start, value))
    return out


def _forward(model: Any, tokenizer: Any, task: TaskSpec, examples: list[Example], batch_size: int,
             max_length: int, repeats: int, warmup: int, sync: Callable[[], None]) -> dict[str, float]:
    """Median seconds of one forward pass over every example, in batches (inputs moved to the device first)."""
    from layerwise.data.collate import Collator, encode_examples

    device = next(model.parameters()).device
    features = [{k: v for k, v in f.items() if k != "labels"}  # labels would add the loss to the timing
                for f in encode_examples(examples, tokenizer, task, max_length)]
    collate = Collator(tokenizer, task)
    batches = [{k: v.to(device) for k, v in collate(features[s: s + batch_size]).items()}
               for s in range(0, len(features), batch_size)]

    def run() -> None:
        for batch in batches:
            model(**batch)

    return {"seconds": statistics.median(t for t, _ in _timed(run, repeats, warmup, sync))}


def _generation(model: Any, tokenizer: Any, examples: list[Example], batch_size: int, max_length: int,
                new_tokens: int, repeats: int, warmup: int, sync: Callable[[], None]) -> dict[str, float]:
    """Median seconds, TTFT and ITL of greedy generation of exactly ``new_tokens`` tokens per prompt."""
    from transformers import GenerationConfig, LogitsProcessorList

    from layerwise.data.collate import generation_batches

    if new_tokens < 2:
        raise ConfigError(f"new_tokens must be >= 2 to measure an inter-token latency, got {new_tokens}")
    device = next(model.parameters()).device
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None) or tokenizer.eos_token_id
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
    batches = [{k: v.to(device) for k, v in b.inputs.items()}
               for b in generation_batches(examples, tokenizer, batch_size, max_length)]

    def run() -> tuple[float, float]:
        ttft, itl = [], []
        for inputs in batches:
            clock = _TokenClock(sync)
            start = time.perf_counter()
            model.generate(**inputs, generation_config=config, logits_processor=LogitsProcessorList([clock]))
            ttft.append(clock.stamps[0] - start)
            itl.append((clock.stamps[-1] - clock.stamps[0]) / (len(clock.stamps) - 1))
        return statistics.fmean(ttft), statistics.fmean(itl)

    passes = _timed(run, repeats, warmup, sync)
    seconds = statistics.median(t for t, _ in passes)
    return {"seconds": seconds, "new_tokens": new_tokens,
            "ttft_ms": 1000.0 * statistics.median(v[0] for _, v in passes),
            "itl_ms": 1000.0 * statistics.median(v[1] for _, v in passes),
            "tokens_per_s": len(examples) * new_tokens / seconds if seconds > 0 else None}


class _TokenClock:
    """A logits processor (``generate`` calls it with the logits of each new token, once per token) that stamps
    the clock; a plain callable, so importing this module does not import transformers."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.stamps: list[float] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.sync()  # on a GPU the logits are ready only after the queued work; generate syncs here anyway
        self.stamps.append(time.perf_counter())
        return scores
