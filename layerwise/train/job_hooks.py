"""Hooks of the train job (``layerwise.workflows.train``): the weights writer of full fine-tuning and the
callback that lets AdaLoRA reallocate its ranks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["FullModelWeights", "AdaLoraAllocation"]


class FullModelWeights:
    """Weights writer of full fine-tuning: the folder holds ``model.safetensors`` of the whole model
    (written atomically) instead of a peft adapter."""

    def save_adapter(self, model: Any, path: str | os.PathLike) -> Path:
        from safetensors.torch import save_model

        from layerwise.train.checkpoint import replace_dir

        return replace_dir(path, lambda tmp: save_model(model, str(tmp / "model.safetensors")))


class AdaLoraAllocation:
    """AdaLoRA prunes and reallocates its ranks only when ``update_and_allocate`` is called after each
    optimizer step, while the gradients are still there (peft's contract); the loop calls this hook then."""

    def __init__(self, peft_model: Any) -> None:
        self.model = peft_model

    def after_optimizer_step(self, step: int) -> None:
        self.model.base_model.update_and_allocate(step)
