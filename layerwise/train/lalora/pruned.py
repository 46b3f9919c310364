"""Keep the pruned part of each LoRA factor exactly as it was, so a rank can grow back.

The rows ``A[r:]`` and columns ``B[:, r:]`` beyond a block's rank get a zero gradient, yet AdamW would still
move them: weight decay shrinks them and ``exp_avg`` / ``exp_avg_sq`` decay towards zero (a non-zero
``exp_avg`` even keeps updating the weights). :func:`save_pruned` copies those slices of the parameter and of
every optimizer state tensor shaped like it (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, ...) before
``optimizer.step()``; :func:`restore_pruned` writes them back after it. The pruned part is then bit for bit
what it was when the rank shrank, and so is its optimizer state when the rank grows back. (AdamW's per-tensor
``step`` count, used for bias correction, keeps counting: it is shared by every row of the tensor.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["PrunedSlice", "save_pruned", "restore_pruned", "pruned_view"]


@dataclass
class PrunedSlice:
    """A saved slice: ``target.narrow(dim, start, length)`` held ``values`` before the optimizer step."""

    target: torch.Tensor
    dim: int
    start: int
    values: torch.Tensor


def pruned_view(factor: torch.nn.Module) -> tuple[int, int] | None:
    """(dim, start) of the part of the factor's weight (and of tensors shaped like it) beyond its rank; None at
    full rank. ``A`` (``(r_max, in)``) is pruned along rows, ``B`` (``(out, r_max)``) along columns."""
    if factor.rank >= factor.r_max:
        return None
    return (0 if factor.side == "A" else 1), factor.rank


@torch.no_grad()
def save_pruned(factors: Sequence[torch.nn.Module], optimizer: torch.optim.Optimizer | None) -> list[PrunedSlice]:
    """Copies of the pruned slices of every factor's weight and of its optimizer state tensors."""
    saved: list[PrunedSlice] = []
    for factor in factors:
        where = pruned_view(factor)
        if where is None:
            continue
        dim, start = where
        weight = factor.weight
        state = optimizer.state.get(weight, {}) if optimizer is not None else {}
        targets = [weight.data, *(t for t in state.values() if torch.is_tensor(t) and t.shape == weight.shape)]
        for target in targets:
            values = target.narrow(dim, start, target.shape[dim] - start).clone()
            saved.append(PrunedSlice(target, dim, start, values))
    return saved


@torch.no_grad()
def restore_pruned(saved: Sequence[PrunedSlice]) -> None:
    """Write the saved slices back (after ``optimizer.step()``).

    State tensors the step itself created (a fresh optimizer's first step) need nothing: the pruned gradient
    is exactly zero, so their pruned part is exactly zero, as for rows never trained.
    """
    for item in saved:
        item.target.narrow(item.dim, item.start, item.values.shape[item.dim]).copy_(item.values)
