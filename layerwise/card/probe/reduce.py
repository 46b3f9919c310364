"""Reduce one probe pass over the ranks of a data-parallel run: every rank ends with the global statistics.

Each rank probes its shard of the calibration batches (batch i on rank i % world, see
``layerwise.runtime.distributed.shard``). The accumulators of :mod:`layerwise.card.probe.stats` are additive, so:

- sums and counts (token norms, ``out_grad``'s g x^T, token/example/batch counters) are summed;
- centred moments (``_Moments``: n, means, centred sums) are merged exactly about the global means,
  sum (y - my)(x - mx)^T = sum_r [C_r + n_r (my_r - my)(mx_r - mx)^T] (Chan et al.'s pairwise update for R
  parts): one all-reduce of (n, n my_r, n mx_r), then one of the re-centred (d_y, d_x) sums;
- per-batch histories (norm, CKA, energy, gradient values) are gathered back in global batch order, so the
  bootstrap stability of the card is computed from the very same (n_batches, L) matrix as in one process;
- probe time and peak memory are the maximum over ranks (the per-rank values are kept for the card).

In one process :func:`reduce_result_` does nothing.
"""

from __future__ import annotations

from typing import Any

import torch

from layerwise.runtime import distributed
from layerwise.card.probe.stats import GradSums, ProbeStats, _Moments

__all__ = ["reduce_", "reduce_result_"]

_F64 = torch.float64

# ProbeStats fields holding one (L,) tensor per batch, gathered in global batch order.
_HISTORIES = ("pooled_batches", "energy_batches", "out_grad_batches", "grad_sq", "grad_wg")


def reduce_result_(result: Any) -> dict[str, Any]:
    """Reduce a :class:`~layerwise.card.probe.runner.ProbeResult` in place (stats, seconds, memory, chaining).

    Returns what the card's ``probe`` section adds in a multi-process run (``world_size`` and per-rank
    seconds and peak memory); ``{}`` in one process.
    """
    if distributed.world_size() == 1:
        return {}
    local = {"seconds": result.seconds, "peak": result.peak_memory, "start": result.start_memory,
             "chained": dict(result.chained)}
    parts = distributed.all_gather_objects(local)
    reduce_(result.stats)
    result.seconds = max(p["seconds"] for p in parts)
    result.peak_memory = max(p["peak"] for p in parts)
    result.start_memory = max(p["start"] for p in parts)
    for p in parts:  # decided on each rank's first batch; identical wherever a rank saw a batch
        for i, chained in p["chained"].items():
            result.chained.setdefault(i, chained)
    return {"world_size": len(parts), "seconds_per_rank": [p["seconds"] for p in parts],
            "peak_memory_per_rank": [p["peak"] for p in parts]}


def reduce_(stats: ProbeStats) -> ProbeStats:
    """Make ``stats`` (this rank's shard) the statistics of all ranks' batches, in place; returns it."""
    if distributed.world_size() == 1:
        return stats
    _gather_small_(stats)
    for kind in stats.norm_sums:
        stats.norm_sums[kind] = distributed.all_reduce_sum(stats.norm_sums[kind].to(_F64).clone())
        stats.norm_counts[kind] = distributed.all_reduce_sum(stats.norm_counts[kind].to(_F64).clone())
    groups = {"pooled": (stats.pooled_in, stats.pooled_out, stats.pooled_cross), "input_cov": (stats.input_cov,)}
    for name, lists in groups.items():
        if name in stats.wanted:
            for moments in lists:
                _reduce_moments_list_(moments, stats.hidden)
    if "out_grad" in stats.wanted:
        _reduce_grad_sums_(stats.out_grad)
    return stats


def _gather_small_(stats: ProbeStats) -> None:
    """Counters (summed), per-batch histories (global batch order) and parameter counts, in one gather."""
    local = {"batches": stats.batches, "tokens": stats.tokens, "examples": stats.examples,
             "param_counts": stats.param_counts,
             "norm_batches": {k: [t.cpu() for t in v] for k, v in stats.norm_batches.items()},
             **{name: [t.cpu() for t in getattr(stats, name)] for name in _HISTORIES}}
    parts = distributed.all_gather_objects(local)
    stats.batches = sum(p["batches"] for p in parts)
    stats.tokens = sum(p["tokens"] for p in parts)
    stats.examples = sum(p["examples"] for p in parts)
    counts = [p["param_counts"] for p in parts if p["param_counts"] is not None]
    stats.param_counts = counts[0] if counts else None  # the same block sizes on every rank
    for kind in stats.norm_batches:
        stats.norm_batches[kind] = distributed.unshard([p["norm_batches"][kind] for p in parts])
    for name in _HISTORIES:
        setattr(stats, name, distributed.unshard([p[name] for p in parts]))


def _reduce_moments_list_(moments: list[_Moments], hidden: int) -> None:
    """Merge each block's centred moments over ranks: round 1 the counts and sums, round 2 the centred sums."""
    heads = []
    for m in moments:
        m.fold()
        if m.cent is None:  # this rank added no rows to it (an unused chained input, or no batch)
            m.n, m.my, m.mx = 0, torch.zeros(hidden, dtype=_F64), torch.zeros(hidden, dtype=_F64)
            m.cent = torch.zeros(hidden, hidden, dtype=_F64)
        assert m.my is not None and m.mx is not None
        heads.append(torch.cat([torch.tensor([float(m.n)], dtype=_F64), m.n * m.my.cpu(), m.n * m.mx.cpu()]))
    totals = distributed.all_reduce_sum(torch.cat(heads)).split([len(h) for h in heads])  # per block: n, sum y, sum x
    for m, head in zip(moments, totals):
        n = float(head[0])
        if n == 0:
            m.n, m.my, m.mx, m.cent = 0, None, None, None  # no rank added rows: as in one process
            continue
        assert m.my is not None and m.mx is not None and m.cent is not None
        dev, dy = m.cent.device, m.my.shape[0]
        my, mx = (head[1: 1 + dy] / n).to(dev), (head[1 + dy:] / n).to(dev)
        # this rank's centred sum moved to the global means: C_r + n_r (my_r - my)(mx_r - mx)^T, (d_y, d_x)
        local = m.cent + m.n * torch.outer(m.my.to(dev) - my, m.mx.to(dev) - mx)
        m.cent = distributed.all_reduce_sum(local)
        m.n, m.my, m.mx = int(round(n)), my, mx


def _reduce_grad_sums_(sums: list[GradSums]) -> None:
    """Sum each block's g x^T over ranks (a block no gradient reached on any rank stays empty)."""
    for s in sums:
        s.fold()
    shapes = distributed.all_gather_objects([tuple(s.total.shape) if s.total is not None else None for s in sums])
    for i, s in enumerate(sums):
        shape = next((p[i] for p in shapes if p[i] is not None), None)
        if shape is None:
            continue
        local = s.total.clone() if s.total is not None else torch.zeros(shape, dtype=_F64)
        s.total = distributed.all_reduce_sum(local)
