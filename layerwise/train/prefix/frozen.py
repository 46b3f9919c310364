"""The frozen prefix: blocks below the lowest adapted block (and the embeddings) get no gradient, so
layerwise runs them without dropout. Their dropout would only add noise to the features the adapted
blocks see, and on the CPU drawing its masks costs a large share of the forward pass (the same holds for
the embeddings' dropout when block 0 is not adapted)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["quiet_frozen_prefix"]


def _has_dropout(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Dropout) for m in module.modules())


def prefix_modules(model: torch.nn.Module, stack: Any, lowest: int) -> list[torch.nn.Module]:
    """Blocks ``0..lowest-1``, the embeddings module(s) that hold dropout (e.g. ``bert.embeddings``) and any
    other dropout registered before the blocks (GPT-2's ``transformer.drop``), on the unwrapped model."""
    from layerwise.models.layers import unwrap_model

    base = unwrap_model(model)
    mods = [b.module for b in stack.blocks[:lowest]]
    if lowest > 0:
        first = stack.blocks[0].module
        for name, module in base.named_modules():  # registration order: what comes before the blocks feeds them
            if module is first:
                break
            if isinstance(module, torch.nn.Dropout) or (name.split(".")[-1] in ("embeddings", "embed_dropout")
                                                        and _has_dropout(module)):
                mods.append(module)
    return mods


def quiet_frozen_prefix(model: torch.nn.Module, stack: Any, layers: list[int] | tuple[int, ...]) -> list[Any]:
    """Keep the frozen prefix below ``min(layers)`` in eval mode (no dropout) whatever mode the model is in.

    Returns the hook handles (``handle.remove()`` undoes it). Blocks from the lowest adapted one upwards
    keep their dropout, as in plain peft training.
    """
    lowest = min(layers)

    def to_eval(module: torch.nn.Module, args: tuple) -> None:
        if module.training:
            module.train(False)

    return [m.register_forward_pre_hook(to_eval) for m in prefix_modules(model, stack, lowest)]
