"""Carving a task's training data: a fixed subset of train, and a validation split held out of train.

Honest model selection needs examples that are neither trained on nor reported: learning rates, the step to
keep and early stopping are chosen on a *validation* split of train, and the dev set is only scored. Both
draws here use their own fixed seed, not the run's seed, so every method and every training seed of a
benchmark sees the same subset and the same validation split.
"""

from __future__ import annotations

import random
from dataclasses import replace

from layerwise.data.examples import TaskData
from layerwise.data.sampling import class_labels, draw_indices
from layerwise.runtime.errors import DataError

__all__ = ["SPLIT_SEED", "subset_train", "hold_out_validation"]

SPLIT_SEED = 1234
"""Seed of the subset and validation draws (fixed: the same split whatever the run's seeds)."""


def subset_train(data: TaskData, n: int, flag: str = "--train-subset") -> TaskData:
    """``data`` with a seeded, class-stratified sample of ``n`` training examples (train order kept)."""
    if n > len(data.train):
        raise DataError(f"{flag} {n} is more than the {len(data.train)} training examples of {data.source}")
    keep = sorted(draw_indices(len(data.train), n, random.Random(SPLIT_SEED), class_labels(data.train)))
    return replace(data, train=[data.train[i] for i in keep])


def hold_out_validation(data: TaskData, fraction: float, flag: str = "--validation-fraction") -> TaskData:
    """``data`` with ``round(fraction * len(train))`` training examples moved to ``validation`` (seeded and
    stratified by class; the remaining training examples keep their order)."""
    n = round(len(data.train) * fraction)
    if n < 1 or n >= len(data.train):
        raise DataError(f"{flag} {fraction} leaves {'no validation' if n < 1 else 'no training'} examples "
                        f"out of the {len(data.train)} training examples of {data.source}")
    held = set(draw_indices(len(data.train), n, random.Random(SPLIT_SEED + 1), class_labels(data.train)))
    return replace(data, train=[e for i, e in enumerate(data.train) if i not in held],
                   validation=[e for i, e in enumerate(data.train) if i in held])
