"""Mixed precision for the training loop: a 16-bit model trains under autocast, with float32 master weights.

The base model's frozen weights stay in the dtype they were loaded in (``--dtype``); every trainable parameter
(the adapters, a trained head, or the whole model in full fine-tuning) is upcast to float32 once, before the
optimizer sees it, so AdamW's moments and the updates are float32. The forward then runs under
``torch.autocast`` in the model's 16-bit dtype (matmuls in bf16/fp16, losses and norms in float32, as torch's
autocast lists decide), on the GPU and, for bfloat16, on the CPU too. float16's narrow range needs loss
scaling: a ``torch.amp.GradScaler`` scales the loss before the backward, unscales the gradients before they
are clipped, and skips a step whose gradients overflowed (its scale is checkpointed, so ``--resume`` stays
exact). A float32 model trains exactly as before (every method below is then a no-op).

    precision = Precision.for_model(model, params)     # before the optimizer is made
    with precision.autocast():
        loss = model(**batch).loss
    precision.backward(loss)
    precision.unscale(optimizer)                         # before clipping
    precision.step(optimizer)
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager, Sequence

import torch

__all__ = ["Precision", "LossScaling", "compute_dtype", "upcast_trainable"]


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the model computes in: that of its frozen floating-point weights (of all of them when
    everything is trainable); float32 when it has none (a fully quantized base computes in float32 here)."""
    frozen = [p.dtype for p in model.parameters() if p.is_floating_point() and not p.requires_grad]
    dtypes = frozen or [p.dtype for p in model.parameters() if p.is_floating_point()]
    for dtype in (torch.float16, torch.bfloat16):  # the narrowest one present decides
        if dtype in dtypes:
            return dtype
    return torch.float32


def upcast_trainable(params: Sequence[torch.nn.Parameter]) -> int:
    """Make every 16-bit parameter in ``params`` float32 in place (same ``Parameter`` objects: an optimizer made
    later, or a peft module holding them, sees the float32 data); returns how many were upcast."""
    n = 0
    for p in params:
        if p.is_floating_point() and p.dtype != torch.float32 and p.dtype != torch.float64:
            p.data = p.data.float()
            n += 1
    return n


class LossScaling:
    """float16's ``GradScaler``, with its scale saved in checkpoints (a :class:`~layerwise.train.hooks.Stateful`
    callback)."""

    def __init__(self, device_type: str) -> None:
        self.scaler = torch.amp.GradScaler(device_type)

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state)


class Precision:
    """How one training run computes: autocast in ``dtype`` on ``device_type`` (off for float32), and loss
    scaling for float16."""

    def __init__(self, dtype: torch.dtype = torch.float32, device_type: str = "cpu") -> None:
        self.dtype = dtype
        self.device_type = device_type
        self.enabled = dtype in (torch.float16, torch.bfloat16)
        self.scaling = LossScaling(device_type) if dtype == torch.float16 else None

    @classmethod
    def for_model(cls, model: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> "Precision":
        """The precision of ``model``'s frozen weights; ``params`` (the trainable ones) become float32."""
        dtype = compute_dtype(model)
        device = params[0].device if params else torch.device("cpu")
        upcast_trainable(params)
        return cls(dtype, device.type)

    def stateful(self) -> tuple[Any, ...]:
        """What checkpoints must save besides the optimizer: the loss scale (float16 only)."""
        return (self.scaling,) if self.scaling is not None else ()

    def autocast(self) -> ContextManager[Any]:
        """Forward passes under this context compute in the model's 16-bit dtype (nothing for float32)."""
        if not self.enabled:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, of the scaled loss under float16."""
        (self.scaling.scaler.scale(loss) if self.scaling is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale in place (before clipping them); nothing without scaling."""
        if self.scaling is not None:
            self.scaling.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; under float16 skipped when a gradient is inf/NaN, and the scale updated."""
        if self.scaling is None:
            optimizer.step()
            return
        self.scaling.scaler.step(optimizer)
        self.scaling.scaler.update()
