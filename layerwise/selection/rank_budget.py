"""Per-layer ranks before training: a total rank budget split over the selected blocks by a card metric.

``split_rank_budget`` is a pure function: ranks proportional to non-negative scores (a card's importance, e.g.
``act_energy``, the trace of the block input's covariance, or ``resnorm``), rounded by largest remainder so
they sum to the budget exactly, each within ``[r_min, r_max]``. With blocks of equal width the adapter has the
parameter count of uniform rank ``budget / len(blocks)``, so the two compare at the same size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from layerwise.runtime.errors import ConfigError

__all__ = ["split_rank_budget", "ranks_from_card", "DEFAULT_RANK_METRIC"]

DEFAULT_RANK_METRIC = "act_energy"
"""The card metric that splits a budget when neither the caller nor the policy names one (EVA-like: the
variance of each block's input)."""


def split_rank_budget(scores: Sequence[float], budget: int, r_min: int = 1, r_max: int | None = None,
                      name: str = "rank_budget") -> list[int]:
    """Ranks summing to ``budget``, each ``r_min + `` a share of the rest proportional to ``scores``.

    >>> split_rank_budget([1.0, 3.0], 8, r_min=0)
    [2, 6]
    >>> split_rank_budget([1.0, 1.0, 1.0], 8)
    [3, 3, 2]

    ``name`` is what errors call the budget (``--rank-budget`` on the command line).
    """
    n = len(scores)
    if n == 0:
        raise ConfigError(f"{name}: no selected layer to give ranks to")
    cap = budget if r_max is None else r_max
    if not (r_min * n <= budget <= cap * n):
        raise ConfigError(f"{name} {budget} cannot give {n} layers ranks in [{r_min}, {cap}]; "
                          f"allowed budgets: {r_min * n}..{cap * n}")
    if any(not math.isfinite(s) or s < 0 for s in scores):
        raise ConfigError(f"{name}: scores must be finite and >= 0, got {list(scores)}")
    ranks = [r_min] * n
    free = [i for i in range(n)]
    left = budget - r_min * n
    while left > 0:  # water-filling: a block at r_max gives its share back to the others
        total = sum(scores[i] for i in free)
        weights = [scores[i] / total if total > 0 else 1.0 / len(free) for i in free]
        raw = [left * w for w in weights]
        give = [min(math.floor(x), cap - ranks[i]) for x, i in zip(raw, free)]
        rest = left - sum(give)
        order = sorted(range(len(free)), key=lambda j: (-(raw[j] - math.floor(raw[j])), free[j]))
        for j in order:  # largest remainder first, lower index on a tie
            if rest == 0:
                break
            if ranks[free[j]] + give[j] < cap:
                give[j] += 1
                rest -= 1
        for j, i in enumerate(free):
            ranks[i] += give[j]
        left = rest
        free = [i for i in free if ranks[i] < cap]
    return ranks


def ranks_from_card(card: Any, layers: Sequence[int], budget: int, metric: str, *, budget_name: str = "rank_budget",
                    metric_name: str = "rank_metric") -> dict[int, int]:
    """Block -> rank for the selected ``layers``: ``budget`` split by ``metric``'s importance on ``card`` (a
    :class:`~layerwise.card.layer_card.LayerCard`; lower-is-better metrics flipped, undefined values 0). Errors name the
    budget and the metric as ``budget_name`` / ``metric_name`` (the flags on the command line)."""
    if metric not in card.metrics:
        raise ConfigError(f"{metric_name} {metric!r} is not on this card; it has: {', '.join(card.metrics)}")
    importance = card.importance(metric)
    chosen = sorted(int(i) for i in layers)
    return dict(zip(chosen, split_rank_budget([importance[i] for i in chosen], budget, name=budget_name)))
