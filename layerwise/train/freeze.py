"""Freeze as you go: the pure criteria (no torch modules) that decide when the next bottom block freezes.

Blocks are the adapted blocks in bottom-up order, ``0..n-1`` here (positions, not model block indices). The
frozen blocks are always a contiguous bottom prefix ``0..frozen-1``; the top ``keep_top`` blocks (and the
task head, which is not a block) are never frozen.

**auto** (after AutoFreeze, Liu, Agarwal & Venkataraman 2021, arXiv 2102.01386), as implemented here:

- between two checks, each trainable block's gradient norm is accumulated: ``G_b = sum over the interval's
  optimizer steps of ||g_b||``, where ``g_b`` is the block's adapter gradient of that step (accumulated over
  micro-batches, unscaled, *before* clipping) and ``||.||`` the L2 norm over all its adapter tensors;
- at a check ``k`` with a previous interval ``k-1``, each trainable block's change is the relative change of
  that accumulated norm, ``r_b = |G_b(k) - G_b(k-1)| / G_b(k-1)`` (``inf`` when ``G_b(k-1) == 0``);
- the threshold is the ``percentile``-th percentile (numpy's linear interpolation) of ``r_b`` over every
  still-trainable block (the never-frozen top blocks included);
- the lowest trainable block freezes when ``r_lowest < threshold`` (strictly) and it is below the kept top
  blocks. At most one block freezes per check; the first check only records ``G`` (no previous interval).

**card**: the Layer Card's ranking sets order and pace. The freezable blocks (all but the top ``keep_top``)
get target steps by their card importance, least important first, evenly spaced from ``start`` to ``end``
(fractions of the step budget); a block then freezes at the latest target of itself and every block below it
(a bottom prefix can only grow from the bottom), see :func:`card_schedule`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FREEZE_MODES", "FreezeState", "relative_changes", "auto_decision", "card_targets", "card_schedule",
           "schedule_warning", "kendall_tau"]

FREEZE_MODES = ("off", "auto", "card")
"""``--freeze`` values: no freezing, the gradient-norm rule, the Layer Card's schedule."""


@dataclass
class FreezeState:
    """The freezing schedule's progress (JSON-able; saved with every checkpoint)."""

    frozen: int = 0
    """Number of bottom blocks frozen (positions ``0..frozen-1``)."""
    previous: list[float] | None = None
    """Accumulated gradient norms of every block over the previous interval (None before the first check)."""
    freeze_steps: list[int | None] = field(default_factory=list)
    """Per block, the optimizer step after which it froze (None: never)."""
    depth: list[list[int]] = field(default_factory=list)
    """``[step, trainable blocks]`` at the start and at each change of the trainable depth."""
    checks: list[dict[str, Any]] = field(default_factory=list)
    """Per check: step, changes, threshold and whether a block froze (auto)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        return {"frozen": self.frozen, "previous": self.previous, "freeze_steps": list(self.freeze_steps),
                "depth": [list(d) for d in self.depth], "checks": list(self.checks)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FreezeState":
        """Inverse of :meth:`to_dict`."""
        return cls(frozen=int(data["frozen"]), previous=data["previous"], freeze_steps=list(data["freeze_steps"]),
                   depth=[list(d) for d in data["depth"]], checks=list(data["checks"]))


def relative_changes(previous: Sequence[float], current: Sequence[float]) -> list[float]:
    """``|current - previous| / previous`` per block (``inf`` where ``previous`` is 0)."""
    return [abs(c - p) / p if p > 0 else math.inf for p, c in zip(previous, current)]


def _percentile(values: Sequence[float], q: float) -> float:
    """numpy's linear-interpolation percentile; an interpolation that touches an ``inf`` change is ``inf``."""
    import numpy as np

    with np.errstate(invalid="ignore"):
        value = float(np.percentile(np.asarray(values, dtype=np.float64), q))
    return math.inf if value != value else value


def auto_decision(previous: Sequence[float] | None, current: Sequence[float], frozen: int, keep_top: int,
                  percentile: float) -> tuple[bool, dict[str, Any]]:
    """Whether the lowest trainable block (position ``frozen``) freezes at this check, and what was seen.

    ``previous``/``current`` are the accumulated gradient norms of *every* block over the previous and this
    interval (frozen blocks' entries are ignored). Returns ``(freeze, info)`` with the trainable blocks'
    ``changes``, the ``threshold`` and the ``candidate`` position.
    """
    n = len(current)
    info: dict[str, Any] = {"candidate": frozen, "changes": None, "threshold": None}
    if previous is None or frozen >= n - keep_top:
        return False, info
    changes = relative_changes(previous[frozen:], current[frozen:])
    threshold = _percentile(changes, percentile)
    info.update(changes=changes, threshold=threshold)
    return bool(changes[0] < threshold), info


def card_targets(importance: Sequence[float], steps: int, keep_top: int, start: float, end: float) -> list[int]:
    """Target step of each freezable block (all but the top ``keep_top``), before the prefix rule: the least
    important by the card first, at ``round(steps * f)`` with ``f`` evenly spaced from ``start`` to ``end``
    (ties in importance go to the lower block first)."""
    n = len(importance) - keep_top
    if n <= 0:
        return []
    order = sorted(range(n), key=lambda b: (importance[b], b))
    targets = [0] * n
    for rank, b in enumerate(order):
        f = start if n == 1 else start + (end - start) * rank / (n - 1)
        targets[b] = max(1, int(round(steps * f)))
    return targets


def card_schedule(importance: Sequence[float], steps: int, keep_top: int, start: float, end: float) -> list[int]:
    """The step after which each freezable block freezes: its :func:`card_targets` raised to the latest
    target of the blocks below it (so the frozen blocks stay a bottom prefix); non-decreasing bottom-up."""
    out, latest = [], 0
    for t in card_targets(importance, steps, keep_top, start, end):
        latest = max(latest, t)
        out.append(latest)
    return out


def schedule_warning(schedule: Sequence[int], blocks: Sequence[int]) -> str | None:
    """A sentence when the card schedule freezes more than half of the freezable blocks at one step: the card
    ranks a low block high (a decoder's importance often falls with depth), and the bottom prefix waits for it,
    so the run is uniform LoRA until then and the top blocks alone after. None otherwise."""
    if len(schedule) < 3:
        return None
    step = max(set(schedule), key=list(schedule).count)
    together = [b for b, s in zip(blocks, schedule) if s == step]
    if len(together) * 2 <= len(schedule):
        return None
    return (f"--freeze card: blocks {together[0]}-{together[-1]} ({len(together)} of {len(schedule)} freezable) "
            f"all freeze after step {step}, because the card ranks a low block high and frozen blocks must stay a "
            "bottom prefix; --freeze auto decides block by block instead")


def kendall_tau(predicted: Sequence[float], observed: Sequence[float]) -> float | None:
    """Kendall's tau-b between the card's predicted freeze order (a score per block, lower freezes earlier)
    and the observed one (freeze step per block; a block that never froze has a step past the run's end).
    None when either side has no variation."""
    from scipy.stats import kendalltau

    if len(set(predicted)) < 2 or len(set(observed)) < 2:
        return None
    tau = kendalltau(list(predicted), list(observed)).statistic
    return None if tau != tau else float(tau)
