"""Seeded draws of examples: calibration samples for the probe and train/dev splits, stratified by class."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from layerwise.data.examples import Example
from layerwise.runtime.errors import ConfigError

__all__ = ["allocate", "class_labels", "draw_indices", "sample_calibration"]

K = TypeVar("K", bound=Hashable)


def allocate(counts: Mapping[K, int], n: int) -> dict[K, int]:
    """Split ``n`` draws over groups in proportion to ``counts`` (largest-remainder rounding).

    Each group gets ``floor(n * count / total)``; the draws left over go to the groups with the largest
    remainders (ties broken by key order), so the quotas sum to ``n`` and never exceed a group's count.
    """
    total = sum(counts.values())
    assert 0 <= n <= total, (n, total)
    if total == 0:
        return {k: 0 for k in counts}
    quota = {k: n * c // total for k, c in counts.items()}
    left = n - sum(quota.values())
    by_remainder = sorted(counts, key=lambda k: (-(n * counts[k] % total), k))
    for k in by_remainder[:left]:
        quota[k] += 1
    return quota


def class_labels(examples: Sequence[Example]) -> list[int] | None:
    """The class index of every example, or ``None`` unless all labels are class indices (``int``)."""
    labels = [e.label for e in examples]
    if labels and all(isinstance(y, int) and not isinstance(y, bool) for y in labels):
        return labels  # type: ignore[return-value]
    return None


def draw_indices(n_items: int, n: int, rng: random.Random, labels: Sequence[int] | None = None) -> list[int]:
    """``n`` distinct indices into ``range(n_items)``, stratified by ``labels`` when given, in random order."""
    if labels is None:
        return rng.sample(range(n_items), n)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[y].append(i)
    quota = allocate({y: len(ix) for y, ix in by_class.items()}, n)
    chosen: list[int] = []
    for y in sorted(by_class):
        chosen += rng.sample(by_class[y], quota[y])
    rng.shuffle(chosen)
    return chosen


def sample_calibration(examples: Sequence[Example], n: int, seed: int, stratify: bool = True) -> list[Example]:
    """Draw ``n`` examples with ``seed`` (the same seed gives the same sample, in the same order).

    With ``stratify`` and class-index labels, each class gets its proportional share (largest-remainder
    rounding); regression, causal-LM and unlabelled examples are drawn uniformly at random.
    """
    if n < 1:
        raise ConfigError(f"--samples must be at least 1, got {n}")
    if n > len(examples):
        raise ConfigError(f"--samples {n} is more than the {len(examples)} examples available; "
                          f"use --samples {len(examples)} or fewer")
    labels = class_labels(examples) if stratify else None
    return [examples[i] for i in draw_indices(len(examples), n, random.Random(seed), labels)]
