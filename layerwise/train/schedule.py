"""Learning-rate schedule as pure functions: linear warmup, then linear, cosine or constant.

``lr_lambda(step, ...)`` is the multiplier of the peak learning rate used by optimizer step ``step``
(0-based), the form :class:`torch.optim.lr_scheduler.LambdaLR` expects.
"""

from __future__ import annotations

import functools
import math
from typing import Any

__all__ = ["warmup_steps", "lr_lambda", "make_scheduler"]


def warmup_steps(total: int, ratio: float) -> int:
    """Steps of linear warmup for ``ratio`` of ``total`` steps (rounded up, as the HF Trainer does)."""
    return int(math.ceil(ratio * total))


def lr_lambda(step: int, total: int, warmup: int, kind: str = "linear") -> float:
    """Multiplier of the peak learning rate at 0-based optimizer step ``step`` of ``total``.

    Warmup ramps ``1/warmup, 2/warmup, ..., 1`` over the first ``warmup`` steps (never 0, so no step is
    wasted); then 'linear' and 'cosine' decay towards 0 at step ``total`` (the last step ``total - 1``
    still moves), and 'constant' stays at 1.
    """
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))  # 0 at the end of warmup, 1 at `total`
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule kind {kind!r}")


def make_scheduler(optimizer: Any, total: int, warmup_ratio: float, kind: str) -> Any:
    """A ``LambdaLR`` over ``optimizer`` following :func:`lr_lambda` (its state dict holds only numbers)."""
    from torch.optim.lr_scheduler import LambdaLR

    fn = functools.partial(lr_lambda, total=total, warmup=warmup_steps(total, warmup_ratio), kind=kind)
    return LambdaLR(optimizer, fn)
