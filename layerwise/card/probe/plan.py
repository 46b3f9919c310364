"""Memory plan of a Layer Card: how each probe statistic is stored, in how many passes, and the projected peak.

The (d x d) statistics are what grows with blocks x d^2: per block, the pooled Grams of CKA (an input and an
output Gram and their cross sums), the input covariance (``act_energy``, ``resnorm``, ``coupling``) and the
residual gradient G = sum_t g_t x_t^T (``resnorm``, ``coupling``). Each is a float64 total plus, while a pass
runs, a float32 buffer of the same shape (``layerwise.card.probe.stats``): 12 bytes per entry.

:func:`plan_statistics` fits them into ``--max-stat-memory``:

1. everything exact, one pass (the probe exactly as before);
2. else CKA's pooled Grams as the pooled vectors themselves when the calibration examples are fewer than 4.5 d
   (CKA then in kernel form, from n x n Grams of the examples: exact, not an estimate), and the residual
   gradient as a seeded Gaussian projection S^T G (S: d x k, entries N(0, 1/k), one S for every
   block), the largest k (d/2, d/4, ... at least :data:`MIN_SKETCH`) that fits in one pass. ``resnorm`` is then
   ||S^T G C^{-T}||_F, a Gaussian trace estimate of ||W||_F^2 = tr(W W^T) for W = G C^{-T}: with probability
   at least 1 - delta its square is within a factor 1 +- eps of the exact one, eps = sqrt(8 ln(2/delta) / k)
   (Roosta-Khorasani and Ascher 2015, Theorem 3, Gaussian estimator), so the norm is within
   1 - sqrt(1 - eps) relatively; ``coupling``'s cosines within 2 eps' / (1 - eps') with eps' for the union
   over the L + L(L-1) norms of W_i and W_i +- W_j. The input covariance stays exact: the whitening inverts it,
   and a projection of it has no such bound;
3. else the blocks are probed in contiguous groups (as many as the smallest k needs, then the largest k that
   needs no more), one pass over the calibration batches per group (each pass
   computes every statistic of its blocks, so the values are those of one pass); ``coupling`` compares blocks
   across groups, so every block's whitened residual signal (float32, k or d rows by d) is kept to the end.

:func:`projected_peak` adds the model's weights, the weights' gradients and the activations a backward keeps to
the statistics, from shapes alone (e.g. Llama-3-8B's, without loading it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from layerwise.runtime.errors import ConfigError

__all__ = ["StatPlan", "plan_statistics", "stat_bytes_per_block", "trace_estimator_eps", "norm_bound",
           "cosine_bound", "projected_peak", "BYTES_PER_ENTRY", "MIN_SKETCH", "DELTA", "SKETCH_SEED"]

BYTES_PER_ENTRY = 12
"""float64 total + float32 pass buffer per entry of a (d x d)-type statistic."""
MIN_SKETCH = 64
"""Smallest projection dimension used (eps = 0.61 at delta = 0.05: below that the bound says little)."""
DELTA = 0.05
"""Failure probability of each stated error bound."""
SKETCH_SEED = 1234
"""Seed of the Gaussian projection (fixed: the same S for every block, pass and rank)."""


def trace_estimator_eps(k: int, delta: float = DELTA) -> float:
    """Relative error eps of a k-sample Gaussian trace estimate of a PSD matrix, holding with probability
    1 - delta: k >= 8 eps^-2 ln(2/delta) (Roosta-Khorasani and Ascher 2015, Theorem 3)."""
    return math.sqrt(8.0 * math.log(2.0 / delta) / k)


def norm_bound(k: int, delta: float = DELTA) -> float:
    """Relative error bound of a Frobenius norm estimated as ||S^T W||_F (its square within 1 +- eps)."""
    eps = trace_estimator_eps(k, delta)
    return 1.0 - math.sqrt(1.0 - eps) if eps < 1 else math.inf


def cosine_bound(k: int, num_blocks: int, delta: float = DELTA) -> float:
    """Absolute error bound of every cosine between sketched W_i and W_j, jointly for all pairs (union bound
    over the L norms and the L(L-1) norms of W_i +- W_j): |<Su,Sv> - <u,v>| <= eps for unit u, v, and the
    norms within sqrt(1 +- eps), so the cosine moves by at most 2 eps / (1 - eps)."""
    events = num_blocks + num_blocks * (num_blocks - 1)
    eps = trace_estimator_eps(k, delta / max(events, 1))
    return 2 * eps / (1 - eps) if eps < 1 else math.inf


def stat_bytes_per_block(hidden: int, statistics: Iterable[str], sketch_dim: int | None = None,
                         pooled_rows: int | None = None) -> int:
    """Bytes one block's (d x d)-type statistics take during a pass; ``out_grad`` is (k x d) when sketched, and
    ``pooled`` the float32 pooled vectors of ``pooled_rows`` examples (input and output state, and their
    concatenation when CKA is computed) instead of Grams."""
    wanted, per = set(statistics), hidden * hidden * BYTES_PER_ENTRY
    total = 0
    if "pooled" in wanted and pooled_rows is not None:
        total += 2 * pooled_rows * hidden * 8
    elif "pooled" in wanted:  # input and output Gram (a chained block shares its predecessor's) and cross sums
        total += 3 * per
    if "input_cov" in wanted:
        total += per
    if "out_grad" in wanted:
        total += per if sketch_dim is None else sketch_dim * hidden * BYTES_PER_ENTRY
    return total


@dataclass
class StatPlan:
    """How the probe stores its statistics: ``sketch_dim`` (None: exact) and the block groups, one pass each."""

    hidden: int
    num_blocks: int
    statistics: frozenset[str]
    budget: int
    sketch_dim: int | None = None
    groups: list[list[int]] = field(default_factory=list)
    pooled_rows: int | None = None
    """Examples whose pooled vectors are kept (CKA in kernel form, exact) instead of the pooled Grams; None: Grams."""
    cross_block: bool = False
    """A metric compares blocks (``coupling``): over several passes every block's whitened residual signal, (k or
    d) x d float32, is kept until the last pass."""

    @property
    def passes(self) -> int:
        return len(self.groups)

    @property
    def exact(self) -> bool:
        """Every statistic as the probe always kept it (exact d x d sums)."""
        return self.sketch_dim is None and self.pooled_rows is None

    def block_bytes(self) -> int:
        return stat_bytes_per_block(self.hidden, self.statistics, self.sketch_dim, self.pooled_rows)

    def shared_bytes(self, grouped: bool) -> int:
        """Bytes held for all blocks: the projection matrix S, and (over several passes) what a cross-block
        metric keeps of every block."""
        s = 0 if self.sketch_dim is None else self.hidden * self.sketch_dim * 4
        if grouped and self.cross_block and "out_grad" in self.statistics:
            s += self.num_blocks * (self.sketch_dim or self.hidden) * self.hidden * 4
        return s

    def bytes(self) -> int:
        """Bytes of the statistics held at once (the largest group, plus :meth:`shared_bytes`)."""
        largest = max((len(g) for g in self.groups), default=0)
        return largest * self.block_bytes() + self.shared_bytes(self.passes > 1)

    def representations(self) -> dict[str, dict[str, Any]]:
        """Per statistic with (d x d)-type sums: its representation and shape (what the card records)."""
        d, out = self.hidden, {}
        for name in ("pooled", "input_cov", "out_grad"):
            if name not in self.statistics:
                continue
            if name == "pooled" and self.pooled_rows is not None:
                out[name] = {"representation": "pooled_rows", "shape": [self.pooled_rows, d]}
            elif name == "out_grad" and self.sketch_dim is not None:
                out[name] = {"representation": "gaussian_projection", "shape": [self.sketch_dim, d],
                             "seed": SKETCH_SEED}
            else:
                out[name] = {"representation": "exact", "shape": [d, d]}
        return out

    def metric_bound(self, metric: str) -> dict[str, Any]:
        """The representation a metric read and its error bound (0 when exact)."""
        if metric == "cka" and self.pooled_rows is not None:
            return {"representation": "pooled_rows (kernel form, exact)", "error_bound": 0.0}
        if self.sketch_dim is None or metric not in ("resnorm", "coupling"):
            return {"representation": "exact", "error_bound": 0.0}
        k = self.sketch_dim
        if metric == "resnorm":
            return {"representation": f"gaussian_projection(k={k})", "error_bound": norm_bound(k),
                    "error_kind": "relative", "delta": DELTA}
        return {"representation": f"gaussian_projection(k={k})", "error_bound": cosine_bound(k, self.num_blocks),
                "error_kind": "absolute (cosines, all pairs jointly)", "delta": DELTA}

    def info(self) -> dict[str, Any]:
        return {"statistics": self.representations(), "passes": self.passes,
                "groups": [[g[0], g[-1]] for g in self.groups], "stat_bytes": self.bytes(),
                "max_stat_memory": self.budget}


def _sketch_dims(hidden: int) -> list[int]:
    dims, k = [], hidden // 2
    while k >= MIN_SKETCH:
        dims.append(k)
        k //= 2
    return dims


def plan_statistics(num_blocks: int, hidden: int, statistics: Iterable[str], budget: int,
                    sketch_dim: int | None = None, cross_block: bool = False,
                    examples: int | None = None) -> StatPlan:
    """The plan for ``statistics`` of ``num_blocks`` blocks of width ``hidden`` within ``budget`` bytes.

    ``sketch_dim`` forces the residual gradient's projection dimension (None: exact when everything fits, else
    the largest that fits in one pass, else the largest that needs no more passes than the smallest).
    ``cross_block`` (``coupling`` is measured) counts what it keeps of every block over several passes.
    ``examples`` (the calibration examples, when known) lets CKA keep the pooled vectors, (examples x d) per
    state, instead of (d x d) Grams when that is smaller and the Grams do not fit.
    """
    wanted = frozenset(statistics)
    plan = StatPlan(hidden, num_blocks, wanted, budget, sketch_dim, [list(range(num_blocks))], None, cross_block)
    if plan.bytes() > budget and "pooled" in wanted and examples is not None and \
            2 * examples * hidden * 8 < 3 * hidden * hidden * BYTES_PER_ENTRY:
        plan.pooled_rows = examples
    if sketch_dim is None and plan.bytes() > budget and "out_grad" in wanted:
        for k in _sketch_dims(hidden):
            plan.sketch_dim = k
            if plan.bytes() <= budget:
                break
    if plan.bytes() <= budget:
        return plan
    dims = [plan.sketch_dim] if sketch_dim is not None or plan.sketch_dim is None else _sketch_dims(hidden)
    fewest = _grouped(plan, dims[-1])  # the smallest projection: the fewest passes
    if fewest is None:
        one = plan.block_bytes() + plan.shared_bytes(grouped=True)
        raise ConfigError(f"--max-stat-memory {budget} bytes: even one block's statistics (hidden size {hidden}) need "
                          f"{one} bytes; raise the limit, or choose metrics without covariances (actnorm, gradnorm, "
                          "fisher, taylor, cost)")
    for k in dims:  # then the largest projection that needs no more passes
        wider = _grouped(plan, k)
        if wider is not None and wider.passes == fewest.passes:
            return wider
    return fewest  # pragma: no cover - dims[-1] itself qualifies


def _grouped(plan: StatPlan, k: int | None) -> StatPlan | None:
    """``plan`` with projection ``k`` over as few passes as fit the budget; None if one block does not fit."""
    p = StatPlan(plan.hidden, plan.num_blocks, plan.statistics, plan.budget, k, [], plan.pooled_rows, plan.cross_block)
    per = (plan.budget - p.shared_bytes(grouped=True)) // max(p.block_bytes(), 1)
    if per < 1:
        return None
    p.groups = _groups(plan.num_blocks, per)
    return p


def _groups(num_blocks: int, per: int) -> list[list[int]]:
    """Contiguous groups of at most ``per`` blocks."""
    return [list(range(i, min(i + per, num_blocks))) for i in range(0, num_blocks, per)]


def projected_peak(*, hidden: int, num_blocks: int, mlp: int, kv_dim: int | None = None, vocab: int = 32000,
                   examples: int | None = None,
                   statistics: Iterable[str] = (), budget: int | None = None, dtype_bytes: int = 4,
                   batch: int = 8, tokens: int = 128, param_grads: bool = True,
                   tied_embeddings: bool = False, cross_block: bool = False) -> dict[str, int]:
    """Projected peak bytes of a card's probe pass from a decoder's shapes (Llama-style blocks: q, k, v, o and a
    gated MLP), by component. ``budget`` None: the statistics exact in one pass; else as
    :func:`plan_statistics` would store them.

    ``activations`` counts what autograd keeps per token per block with fused (SDPA) attention: the block
    input and its two normalised copies, q, k, v, the attention output, o's input (6 d + 2 kv), the MLP's
    gate, up, activation and product (4 mlp); plus float32 logits of the whole batch, twice (logits and their
    gradient). A count of saved tensors, not a measurement (README compares it with SmolLM2's measured peak).
    """
    kv = hidden if kv_dim is None else kv_dim
    wanted = frozenset(statistics)
    block_linear = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * mlp
    embeddings = (1 if tied_embeddings else 2) * vocab * hidden  # input embeddings and the LM head
    weights = (num_blocks * (block_linear + 2 * hidden) + embeddings) * dtype_bytes
    backward = bool(wanted & {"out_grad", "param_grad"})
    grads = num_blocks * block_linear * dtype_bytes if backward and param_grads else 0
    n = batch * tokens
    per_block = (6 * hidden + 2 * kv + 4 * mlp) * dtype_bytes
    acts = n * (per_block * (num_blocks if backward else 1)) + 2 * n * vocab * 4
    if budget is None:
        stats = num_blocks * stat_bytes_per_block(hidden, wanted)
        passes = 1
    else:
        plan = plan_statistics(num_blocks, hidden, wanted, budget, examples=examples, cross_block=cross_block)
        stats, passes = plan.bytes(), plan.passes
    return {"weights": weights, "weight_grads": grads, "activations": acts, "statistics": stats,
            "total": weights + grads + acts + stats, "passes": passes}
