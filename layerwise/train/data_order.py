"""Deterministic data order: which examples make up the micro-batch of global micro-step ``n``.

Each epoch is a permutation drawn from ``(seed, epoch)`` and cut into ``size // batch_size`` full batches
(the remainder is left out of that epoch; the next permutation differs, so every example is used). The
batch of micro-step ``n`` is therefore a pure function of ``(seed, n, size, batch_size)``: a resumed run
continues with exactly the batches the uninterrupted run would have seen, with no sampler state to save.

Grouping by length (``--group-by-length W``): the epoch's permutation is cut into windows of ``W`` batches,
each window is sorted by example length and cut into batches, and the order of all the epoch's batches
is shuffled again (seeded by ``(seed, epoch)`` too). Batches then hold examples of similar length, so
dynamic padding pads little, while which examples meet in a batch and the order of batches stay random
at the scale of a window. It is still a pure function of the seed, the step and the lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["batches_per_epoch", "epoch_permutation", "epoch_order", "batch_indices", "DataOrder"]


def batches_per_epoch(size: int, batch_size: int) -> int:
    """Full batches per epoch; a data set smaller than one batch gives one (smaller) batch."""
    assert size > 0 and batch_size > 0, (size, batch_size)
    return max(1, size // batch_size)


def epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order of the ``size`` examples in ``epoch``: a permutation seeded by ``(seed, epoch)``; shape (size,)."""
    return np.random.default_rng([seed, epoch]).permutation(size)


def epoch_order(seed: int, epoch: int, size: int, batch_size: int, lengths: Sequence[int] | None = None,
                window: int = 0) -> np.ndarray:
    """The examples of ``epoch`` in batch order: batch ``k`` is ``[k * batch_size, (k + 1) * batch_size)``.

    Without ``lengths``/``window`` this is :func:`epoch_permutation`; with them, examples are grouped by
    length within windows of ``window`` batches and the batches are shuffled (see the module docstring).
    """
    perm = epoch_permutation(seed, epoch, size)
    if not window or lengths is None:
        return perm
    if len(lengths) != size:
        raise ValueError(f"{len(lengths)} lengths for {size} examples")
    used = min(size, batches_per_epoch(size, batch_size) * batch_size)
    perm, rest = perm[:used], perm[used:]
    span, lens = window * batch_size, np.asarray(lengths)
    grouped = np.concatenate([chunk[np.argsort(lens[chunk], kind="stable")]
                              for chunk in np.split(perm, range(span, len(perm), span))])
    batches = grouped.reshape(-1, min(batch_size, len(grouped)))
    order = np.random.default_rng([seed, epoch, 1]).permutation(len(batches))
    return np.concatenate([batches[order].reshape(-1), rest])


def batch_indices(seed: int, n: int, size: int, batch_size: int, lengths: Sequence[int] | None = None,
                  window: int = 0) -> list[int]:
    """Indices of the examples in the micro-batch of global micro-step ``n`` (0-based)."""
    per_epoch = batches_per_epoch(size, batch_size)
    epoch, position = divmod(n, per_epoch)
    start = position * batch_size
    return epoch_order(seed, epoch, size, batch_size, lengths, window)[start: start + batch_size].tolist()


class DataOrder:
    """:func:`batch_indices` with the current epoch's order cached (one order per epoch)."""

    def __init__(self, seed: int, size: int, batch_size: int, lengths: Sequence[int] | None = None,
                 window: int = 0) -> None:
        self.seed, self.size, self.batch_size = seed, size, batch_size
        self.lengths, self.window = lengths, window
        self.per_epoch = batches_per_epoch(size, batch_size)
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def __call__(self, n: int) -> list[int]:
        """Same as ``batch_indices(seed, n, size, batch_size, lengths, window)``."""
        epoch, position = divmod(n, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = epoch_order(self.seed, epoch, self.size, self.batch_size, self.lengths, self.window)
        start = position * self.batch_size
        return self._perm[start: start + self.batch_size].tolist()
