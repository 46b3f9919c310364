"""Ranking agreement helpers against scipy and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau

from layerwise.card.stability import bootstrap_stability, kendall_tau, kendall_taus, ranks_of, top_k_jaccard


@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_b_matches_scipy_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, 12).astype(float)  # ties on purpose
    bs = rng.integers(0, 4, (6, 12)).astype(float)
    ours = kendall_taus(a, bs)
    for b, t in zip(bs, ours):
        assert t == pytest.approx(kendalltau(a, b).statistic, abs=1e-12)


def test_kendall_edge_cases() -> None:
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1, 1, 1], [2, 2, 2]) == 1.0
    assert kendall_tau([1, 1, 1], [1, 2, 3]) == 0.0


def test_ranks_and_jaccard() -> None:
    assert ranks_of([0.1, 0.5, 0.3]) == [3, 1, 2]
    assert ranks_of([0.1, 0.5, 0.3], higher_is_better=False) == [1, 3, 2]
    assert top_k_jaccard([3, 2, 1, 0], [3, 0, 1, 2], k=2) == pytest.approx(1 / 3)


def test_bootstrap_identical_batches_are_perfectly_stable() -> None:
    per_batch = np.tile(np.arange(6.0), (8, 1))
    s = bootstrap_stability(per_batch, n_boot=50)
    assert s["kendall_tau_mean"] == 1.0 and s["kendall_tau_std"] == 0.0 and s["top_k_jaccard_mean"] == 1.0


def test_bootstrap_noise_lowers_stability() -> None:
    rng = np.random.default_rng(0)
    per_batch = rng.normal(size=(8, 6))
    s = bootstrap_stability(per_batch, n_boot=100)
    assert s["kendall_tau_mean"] < 0.9
