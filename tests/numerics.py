"""Tolerances that come from what fp32 can give, not from a round number.

Two fp32 computations of one quantity that differ in batch shape, summation order or kernel (a cached prefix
against a recomputed one, two processes against one, a recomputed forward) round differently, and by how much
depends on the CPU's kernels (MKL on AVX-512 picks other blockings than on AVX2). A fixed ``rtol=1e-6`` then
passes on one machine and fails on another. Instead, each comparison here measures fp32's own error of the
computation *without* the feature on this machine, as its distance from a float64 reference, and requires the
feature's fp32 result to be no further from that reference than a small multiple of it::

    |with_feature_32 - reference_64|  <=  FACTOR * max(|without_feature_32 - reference_64|, FLOOR * |reference_64|)

A real bug (the wrong block's rows, rows shifted by one example, a missing term) moves the result by orders of
magnitude more than rounding, so the check still fails on it; the ``FLOOR`` (a few fp32 ulps) only keeps a
quantity that happens to round exactly in the baseline from demanding exactness of the feature.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

__all__ = ["EPS32", "FACTOR", "FLOOR", "spread_bound", "assert_within_fp32_spread", "assert_tensors_within_fp32_spread"]

EPS32 = float(torch.finfo(torch.float32).eps)  # 2**-23
FACTOR = 8.0  # the feature may round up to 8x worse than the baseline (measured: 0.8x..1.2x on two CPUs)
FLOOR = 4 * EPS32  # relative: a few ulps of the reference's norm


def _as64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64).cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def spread_bound(baseline, reference, factor: float = FACTOR) -> float:
    """The largest distance (Frobenius) from ``reference`` allowed for a second fp32 computation of the quantity
    whose plain fp32 computation is ``baseline``."""
    base, ref = _as64(baseline), _as64(reference)
    return factor * max(float(np.linalg.norm(base - ref)), FLOOR * float(np.linalg.norm(ref)))


def assert_within_fp32_spread(got, baseline, reference, name: str = "", factor: float = FACTOR) -> None:
    """``got`` (fp32, with the feature) is within ``factor`` times fp32's own error of ``baseline`` (fp32,
    without it), both measured against ``reference`` (float64, without it)."""
    got64, ref = _as64(got), _as64(reference)
    assert got64.shape == ref.shape == _as64(baseline).shape, name
    err = float(np.linalg.norm(got64 - ref))
    bound = spread_bound(baseline, reference, factor)
    base_err = float(np.linalg.norm(_as64(baseline) - ref))
    assert err <= bound, (f"{name}: |got - ref64| = {err:.3e} exceeds {factor:g} x fp32's spread "
                          f"(|baseline - ref64| = {base_err:.3e}, floor {FLOOR * float(np.linalg.norm(ref)):.3e})")


def assert_tensors_within_fp32_spread(got: Mapping[str, torch.Tensor], baseline: Mapping[str, torch.Tensor],
                                      reference: Mapping[str, torch.Tensor], factor: float = FACTOR) -> None:
    """:func:`assert_within_fp32_spread` for each tensor of a state dict (same keys in all three)."""
    assert got.keys() == baseline.keys() == reference.keys() and got
    for name in reference:
        assert_within_fp32_spread(got[name], baseline[name], reference[name], name, factor)
