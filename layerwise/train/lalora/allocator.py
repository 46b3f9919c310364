"""The La-LoRA rank allocator as pure functions over plain numbers (no model, no torch).

La-LoRA (Gu et al., "La-LoRA: Parameter-efficient fine-tuning with layer-wise adaptive low-rank
adaptation", Neural Networks 194, 2025) treats each adapted transformer block ``i`` (all its targeted
projections together) as one unit with a rank ``r_i`` in ``[1, r_max]``: only the first ``r_i`` rows of
every ``A`` (shape ``(r_max, in)``) and the first ``r_i`` columns of every ``B`` (shape ``(out, r_max)``)
are used (Eq. 3-4). Every ``--rank-interval`` steps:

* the layer value ``s_i = (1/r_i) * sum_m (||B_m[:, :r_i]||_F + ||A_m[:r_i]||_F)`` (Eq. 7, ``m`` over the
  block's projections) and its relative growth ``IR_i = (s_i^t - s_i^(t-1)) / s_i^(t-1)`` (Eq. 6);
* the budget ``DCDPB^t = DCDPB^(t-1) * (1 + gamma * mean_i IR_i)``, clipped to ``[L, r_max * L]``, starting
  at ``L`` (Eq. 5; ``L`` adapted blocks); the ``--no-car`` ablation starts it at ``r_max * L``;
* the contributions ``c_i = sum_m (f_dw * ||B_m[:, :r_i]||_F + f_up * ||A_m[:r_i]||_F)`` with the fidelities
  ``f_dw = ||A_m[:r_i]||_F / ||A_m||_F`` (the down-projection ``A``) and ``f_up = ||B_m[:, :r_i]||_F / ||B_m||_F``
  (the up-projection ``B``) (Eq. 9 the contribution, Eq. 10 the fidelities); each norm is weighted by the
  fidelity of its partner factor, as Eq. 9 is written; ``--no-fidelity`` sets ``f = 1``; ``--contribution
  fisher`` uses accumulated Fisher information;
* the ranks ``r_i = softmax(c)_i * DCDPB`` as integers in ``[1, r_max]`` summing to ``round(DCDPB)`` (Eq. 8).

One choice the paper leaves open: ``s_i^(t-1)`` is evaluated at the ranks in force *after* the previous
reallocation (see :func:`reallocate`), so ``IR`` measures what training changed, not what the reallocation
changed. Taken at the old ranks, every rank increase would read as a drop of ``s`` (the newly used columns of
``B`` start near zero while ``1/r_i`` shrinks) and pull the budget down at once.

Everything a factor contributes is summarised by the squared norms of its rank-one slices
(:class:`FactorProfile`), so a truncated norm at any rank is a prefix sum: one pass over the weights serves
every equation above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# the setting values and their check live with the settings (AdaptiveRanks reads them when it is defined)
from layerwise.settings.lalora import CONTRIBUTIONS, DEFAULT_GAMMA, RANK_SCALES, check_settings

__all__ = [
    "CONTRIBUTIONS",
    "RANK_SCALES",
    "DEFAULT_GAMMA",
    "FactorProfile",
    "Allocation",
    "check_settings",
    "layer_values",
    "growth_rates",
    "initial_budget",
    "update_budget",
    "fidelities",
    "norm_contributions",
    "softmax",
    "allocate_ranks",
    "reallocate",
]

@dataclass(frozen=True)
class FactorProfile:
    """Squared norms of the rank-one slices of one projection's LoRA factors.

    ``a_rows[k] = ||A[k, :]||^2`` and ``b_cols[k] = ||B[:, k]||^2`` for ``k < r_max``; both have length
    ``r_max``. ``||A[:r]||_F = sqrt(sum(a_rows[:r]))``, and likewise for ``B``.
    """

    a_rows: tuple[float, ...]
    b_cols: tuple[float, ...]

    def a_norm(self, rank: int | None = None) -> float:
        """``||A[:rank]||_F`` (the full norm when ``rank`` is None)."""
        return math.sqrt(math.fsum(self.a_rows[:rank]))

    def b_norm(self, rank: int | None = None) -> float:
        """``||B[:, :rank]||_F`` (the full norm when ``rank`` is None)."""
        return math.sqrt(math.fsum(self.b_cols[:rank]))

    def is_finite(self) -> bool:
        """False when any slice norm is NaN or infinite (the weights diverged)."""
        return all(math.isfinite(v) for v in (*self.a_rows, *self.b_cols))


Block = Sequence[FactorProfile]
"""The profiles of one adapted block's projections (one per targeted linear layer)."""


@dataclass(frozen=True)
class Allocation:
    """The outcome of one rank update (:func:`reallocate`); every list has one entry per block."""

    ranks: list[int]
    """New ranks ``r_i^t`` (Eq. 8); sum ``round(budget)``."""
    budget: float
    """New budget ``DCDPB^t`` (Eq. 5)."""
    values: list[float]
    """Layer values ``s_i^t`` at the ranks used in the steps just done (Eq. 7)."""
    rates: list[float]
    """Growth rates ``IR_i^t`` (Eq. 6)."""
    contributions: list[float]
    """Contributions ``c_i^t`` the ranks were shared by (Eq. 9, or Fisher sums)."""
    next_values: list[float]
    """Layer values at the new ranks: the ``s^(t-1)`` of the next update."""


def layer_values(blocks: Sequence[Block], ranks: Sequence[int]) -> list[float]:
    """Eq. 7: ``s_i = (1/r_i) * sum_m (||B_m[:, :r_i]||_F + ||A_m[:r_i]||_F)``; shape (L,)."""
    _same_length(blocks, ranks)
    return [math.fsum(p.b_norm(r) + p.a_norm(r) for p in block) / r for block, r in zip(blocks, ranks)]


def growth_rates(values: Sequence[float], previous: Sequence[float]) -> list[float]:
    """Eq. 6: ``IR_i = (s_i^t - s_i^(t-1)) / s_i^(t-1)``; shape (L,). A zero previous value gives 0."""
    _same_length(values, previous)
    return [(s - p) / p if p > 0 else 0.0 for s, p in zip(values, previous)]


def initial_budget(num_blocks: int, r_max: int, car: bool = True) -> float:
    """Eq. 5's start: ``DCDPB^0 = L`` (every block at rank 1), or ``r_max * L`` without CAR (``--no-car``)."""
    return float(num_blocks if car else r_max * num_blocks)


def update_budget(budget: float, rates: Sequence[float], gamma: float, num_blocks: int, r_max: int) -> float:
    """Eq. 5: ``DCDPB^t = DCDPB^(t-1) * (1 + gamma * mean_i IR_i)``, clipped to ``[L, r_max * L]``; shape ()."""
    mean_rate = math.fsum(rates) / len(rates) if rates else 0.0
    return min(max(budget * (1.0 + gamma * mean_rate), float(num_blocks)), float(r_max * num_blocks))


def fidelities(profile: FactorProfile, rank: int) -> tuple[float, float]:
    """Eq. 10: ``(f_dw, f_up) = (||A[:r]||_F / ||A||_F, ||B[:, :r]||_F / ||B||_F)``; a zero factor has fidelity 1
    (truncating it loses nothing)."""
    a_full, b_full = profile.a_norm(), profile.b_norm()
    f_dw = profile.a_norm(rank) / a_full if a_full > 0 else 1.0
    f_up = profile.b_norm(rank) / b_full if b_full > 0 else 1.0
    return f_dw, f_up


def norm_contributions(blocks: Sequence[Block], ranks: Sequence[int], fidelity: bool = True) -> list[float]:
    """Eq. 9: ``c_i = sum_m (f_dw * ||B_m[:, :r_i]||_F + f_up * ||A_m[:r_i]||_F)``; ``fidelity=False`` sets
    ``f = 1`` (the ablation); shape (L,)."""
    _same_length(blocks, ranks)
    out = []
    for block, r in zip(blocks, ranks):
        terms = []
        for p in block:
            f_dw, f_up = fidelities(p, r) if fidelity else (1.0, 1.0)
            terms.append(f_dw * p.b_norm(r) + f_up * p.a_norm(r))
        out.append(math.fsum(terms))
    return out


def softmax(values: Sequence[float]) -> list[float]:
    """Numerically stable softmax; shape (L,)."""
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = math.fsum(exps)
    return [e / total for e in exps]


def allocate_ranks(contributions: Sequence[float], budget: float, r_max: int) -> list[int]:
    """Eq. 8: ``r_i = softmax(c)_i * DCDPB`` as integers in ``[1, r_max]`` that sum to ``round(DCDPB)``.

    ``round`` is half-up, and the total is clipped to ``[L, r_max * L]`` (where a solution exists). Shares
    beyond a bound are clipped and their excess re-shared in proportion to the softmax (the real solution
    ``x_i = clip(lam * p_i, 1, r_max)`` with ``sum x = total``); the integers are the floors of ``x`` plus one
    for the largest remainders (ties: lower block index first). Deterministic; shape (L,).
    """
    num = len(contributions)
    total = min(max(math.floor(budget + 0.5), num), r_max * num)
    shares = _clipped_shares(softmax(contributions), total, r_max)
    ranks = [min(max(math.floor(x), 1), r_max) for x in shares]
    left = total - sum(ranks)
    order = sorted(range(num), key=lambda i: (-(shares[i] - ranks[i]), i))
    for i in order:
        if left <= 0:
            break
        if ranks[i] < r_max:
            ranks[i] += 1
            left -= 1
    assert sum(ranks) == total, (ranks, total)
    return ranks


def _clipped_shares(probs: Sequence[float], total: int, r_max: int) -> list[float]:
    """``x_i = clip(lam * p_i, 1, r_max)`` with ``sum x = total``: ``g(lam) = sum x`` is piecewise linear and
    non-decreasing between its breakpoints ``1/p_i`` and ``r_max/p_i``, so ``lam`` is found on one segment."""
    def g(lam: float) -> float:
        return math.fsum(min(max(lam * p, 1.0), float(r_max)) for p in probs)

    points = sorted({b for p in probs for b in (1.0 / p, r_max / p)})
    low = 0.0
    for high in points:
        if g(high) >= total:
            break
        low = high
    else:
        return [float(r_max)] * len(probs)
    g_low, g_high = g(low), g(high)
    lam = high if g_high == g_low else low + (total - g_low) * (high - low) / (g_high - g_low)
    return [min(max(lam * p, 1.0), float(r_max)) for p in probs]


def reallocate(blocks: Sequence[Block], ranks: Sequence[int], previous_values: Sequence[float], budget: float, *,
               gamma: float, r_max: int, fidelity: bool = True,
               fisher: Sequence[float] | None = None) -> Allocation:
    """One La-LoRA update (Eq. 5-10) from the factor profiles of the steps just done at ``ranks``.

    ``previous_values`` are the ``s^(t-1)`` (the ``next_values`` of the previous update); ``fisher`` (one sum
    per block) replaces the norm contributions when given (``--contribution fisher``).
    """
    values = layer_values(blocks, ranks)
    rates = growth_rates(values, previous_values)
    new_budget = update_budget(budget, rates, gamma, len(blocks), r_max)
    contributions = list(fisher) if fisher is not None else norm_contributions(blocks, ranks, fidelity)
    new_ranks = allocate_ranks(contributions, new_budget, r_max)
    return Allocation(ranks=new_ranks, budget=new_budget, values=values, rates=rates, contributions=contributions,
                      next_values=layer_values(blocks, new_ranks))


def _same_length(a: Sequence, b: Sequence) -> None:
    assert len(a) == len(b), f"one entry per block expected, got {len(a)} and {len(b)}"
