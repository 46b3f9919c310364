"""Ranking agreement: Kendall tau, top-k Jaccard, and bootstrap stability of a ranking over batches."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

__all__ = ["order_of", "ranks_of", "kendall_tau", "kendall_taus", "top_k_jaccard", "bootstrap_stability",
           "MIN_STABILITY_BATCHES"]

MIN_STABILITY_BATCHES = 4
"""Fewest calibration batches a bootstrap stability is reported for. Resampling n batches with replacement
gives at most C(2n-1, n) distinct means: 3 for two batches, 10 for three, 35 for four. A card from two batches
said "1.00 ± 0.00" while its ranking changed with more data; below this many batches the stability is
undefined (``null``, with a note) and making the card warns."""


def order_of(values: Sequence[float], higher_is_better: bool = True) -> list[int]:
    """Layer indices from most to least important (ties keep the lower index first)."""
    v = np.asarray(values, dtype=float)
    keys = -v if higher_is_better else v
    return [int(i) for i in np.argsort(keys, kind="stable")]


def ranks_of(values: Sequence[float], higher_is_better: bool = True) -> list[int]:
    """Rank of each layer, 1 = most important."""
    ranks = [0] * len(values)
    for r, i in enumerate(order_of(values, higher_is_better), start=1):
        ranks[i] = r
    return ranks


def _pair_signs(x: np.ndarray) -> np.ndarray:
    """sign(x_i - x_j) over pairs i < j, along the last axis: (..., L*(L-1)/2)."""
    i, j = np.triu_indices(x.shape[-1], k=1)
    return np.sign(x[..., i] - x[..., j])


def kendall_taus(a: Sequence[float], bs: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between ``a`` (L,) and each row of ``bs`` (n, L), vectorised over rows.

    tau_b = sum sign(a_i - a_j) sign(b_i - b_j) / sqrt(#untied pairs in a * #untied pairs in b);
    1.0 when both vectors are constant, 0.0 when only one is.
    """
    sa = _pair_signs(np.asarray(a, dtype=float))  # (P,)
    sb = _pair_signs(np.atleast_2d(np.asarray(bs, dtype=float)))  # (n, P)
    num = sb @ sa
    den = np.sqrt(np.abs(sa).sum() * np.abs(sb).sum(1))
    both_constant = (np.abs(sa).sum() == 0) & (np.abs(sb).sum(1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return np.where(both_constant, 1.0, tau)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two score vectors (1 = same order); 1.0 when both are constant."""
    return float(kendall_taus(a, np.asarray(b, dtype=float)[None, :])[0])


def top_k_jaccard(a: Sequence[float], b: Sequence[float], k: int, higher_is_better: bool = True) -> float:
    """|top-k(a) & top-k(b)| / |top-k(a) | top-k(b)|."""
    ta = set(order_of(a, higher_is_better)[:k])
    tb = set(order_of(b, higher_is_better)[:k])
    return len(ta & tb) / len(ta | tb)


def bootstrap_stability(per_batch: np.ndarray, higher_is_better: bool = True, n_boot: int = 200,
                        seed: int = 0, k: int | None = None) -> dict[str, Any]:
    """How stable the layer ranking of batch-mean scores is under resampling the calibration batches.

    ``per_batch`` is (n_batches, L). Each bootstrap draw resamples batches with replacement, averages them
    and compares its ranking with the full-data ranking: Kendall tau (mean, std) and top-k Jaccard
    (k defaults to half the layers).
    """
    x = np.asarray(per_batch, dtype=float)
    n, L = x.shape
    k = k or max(1, L // 2)
    x = np.where(np.isfinite(x), x, np.nan)
    with warnings.catch_warnings():  # an all-NaN column (no batch had an estimate) becomes 0 below
        warnings.simplefilter("ignore", RuntimeWarning)
        filled = np.where(np.isnan(x), np.nanmean(x, 0, keepdims=True), x)  # batches too small for an estimate
    x = np.nan_to_num(filled, nan=0.0)
    full = x.mean(0)
    if n < MIN_STABILITY_BATCHES:  # undefined, not NaN: the card is JSON, and JSON has no NaN
        what = "one calibration batch" if n == 1 else f"{n} calibration batches"
        return {"kendall_tau_mean": None, "kendall_tau_std": None, "top_k": k, "top_k_jaccard_mean": None,
                "n_batches": n, "n_boot": 0,
                "note": f"undefined: {what} (a bootstrap needs at least {MIN_STABILITY_BATCHES}; raise --samples "
                        "or lower --batch-size)"}
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, n, (n_boot, n))].mean(1)  # (n_boot, L) batch-resampled means
    taus = kendall_taus(full, samples)
    jac = [top_k_jaccard(full, sample, k, higher_is_better) for sample in samples]
    return {"kendall_tau_mean": float(np.mean(taus)), "kendall_tau_std": float(np.std(taus)), "top_k": k,
            "top_k_jaccard_mean": float(np.mean(jac)), "n_batches": n, "n_boot": n_boot}
