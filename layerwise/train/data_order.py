"""Deterministic data order: which examples make up the micro-batch of global micro-step ``n``.

Each epoch is a permutation drawn from ``(seed, epoch)`` and cut into ``size // batch_size`` full batches
(the remainder is left out of that epoch; the next permutation differs, so every example is used). The
batch of micro-step ``n`` is therefore a pure function of ``(seed, n, size, batch_size)``: a resumed run
continues with exactly the batches the uninterrupted run would have seen, with no sampler state to save.
"""

from __future__ import annotations

import numpy as np

__all__ = ["batches_per_epoch", "epoch_permutation", "batch_indices", "DataOrder"]


def batches_per_epoch(size: int, batch_size: int) -> int:
    """Full batches per epoch; a data set smaller than one batch gives one (smaller) batch."""
    assert size > 0 and batch_size > 0, (size, batch_size)
    return max(1, size // batch_size)


def epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order of the ``size`` examples in ``epoch``: a permutation seeded by ``(seed, epoch)``; shape (size,)."""
    return np.random.default_rng([seed, epoch]).permutation(size)


def batch_indices(seed: int, n: int, size: int, batch_size: int) -> list[int]:
    """Indices of the examples in the micro-batch of global micro-step ``n`` (0-based)."""
    per_epoch = batches_per_epoch(size, batch_size)
    epoch, position = divmod(n, per_epoch)
    start = position * batch_size
    return epoch_permutation(seed, epoch, size)[start: start + batch_size].tolist()


class DataOrder:
    """:func:`batch_indices` with the current epoch's permutation cached (one permutation per epoch)."""

    def __init__(self, seed: int, size: int, batch_size: int) -> None:
        self.seed, self.size, self.batch_size = seed, size, batch_size
        self.per_epoch = batches_per_epoch(size, batch_size)
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def __call__(self, n: int) -> list[int]:
        """Same as ``batch_indices(seed, n, size, batch_size)``."""
        epoch, position = divmod(n, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, epoch_permutation(self.seed, epoch, self.size)
        start = position * self.batch_size
        return self._perm[start: start + self.batch_size].tolist()
