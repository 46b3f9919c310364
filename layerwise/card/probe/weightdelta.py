"""The ``weightdelta`` signal: how far LoRA moves each block's weights in a short uniform-LoRA run."""

from __future__ import annotations

import copy
import time
from typing import Any, Sequence

import torch

from layerwise.runtime.quiet import peft_wrapping

__all__ = ["weight_delta"]


def _task_type(model: torch.nn.Module) -> str:
    name = type(model).__name__
    if name.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    return "FEATURE_EXTRACTION"


def weight_delta(model: torch.nn.Module, stack: Any, batches: Sequence[dict], steps: int = 20, rank: int = 8,
                 targets: Sequence[str] = ("q", "v"), lr: float = 1e-3, seed: int = 0) -> tuple[list[float], float]:
    """Train uniform LoRA (all blocks, ``targets``) on a copy of ``model`` for ``steps`` steps over
    ``batches`` (cycled) and return per block the summed ||scaling * B A||_F of its adapters, and seconds.

    The user's model is not modified.
    """
    import peft

    start = time.perf_counter()
    torch.manual_seed(seed)
    work = copy.deepcopy(model)
    names = stack.target_names(range(len(stack)), targets)
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=names,
                             task_type=_task_type(model))
    with peft_wrapping():
        wrapped = peft.get_peft_model(work, config)
    wrapped.train()
    params = [p for p in wrapped.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    for step in range(steps):
        batch = batches[step % len(batches)]
        loss = wrapped(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    values = _delta_norms(wrapped, stack)
    del wrapped, work, opt
    return values, time.perf_counter() - start


def _delta_norms(wrapped: Any, stack: Any) -> list[float]:
    values = [0.0] * len(stack)
    for name, module in wrapped.named_modules():
        if not hasattr(module, "get_delta_weight") or not hasattr(module, "lora_A"):
            continue
        idx = stack.block_of(name)
        if idx is None:
            continue
        with torch.no_grad():
            for adapter in module.lora_A:
                values[idx] += float(module.get_delta_weight(adapter).norm())
    return values
