"""Data parallelism for :func:`layerwise.train.train`: what changes when several processes train one adapter.

With ``W`` processes (``torchrun``/``accelerate launch``; see :mod:`layerwise.runtime.distributed`) and
``--batch-size b`` per process, the global batch of micro-step ``n`` is the one a single process with
``--batch-size b*W`` would draw (``DataOrder(seed, size, b*W)``); rank ``r`` trains on its contiguous
slice ``[r*b, (r+1)*b)``. The peft model is wrapped in ``DistributedDataParallel``, which averages the
trainable parameters' gradients over ranks during ``backward`` (only on the last micro-batch of a step
with gradient accumulation), so clipping, AdamW and the schedule see the single-process gradient of the
global batch and the weights stay identical on every rank. The logged loss is the mean over ranks.

Rank 0 evaluates (the others wait and receive its metrics, so best-checkpoint and early-stopping decisions
agree) and is the only writer of the log, adapters, checkpoints, ``metrics.json`` and plots. A checkpoint
also holds every rank's torch RNG state (dropout), so resuming continues each rank's random stream.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, ContextManager

import torch

from layerwise.runtime import distributed
from layerwise.runtime.errors import ConfigError

__all__ = ["wrap_model", "accumulation", "global_batch_size", "local_part", "mean_over_ranks", "run_info",
           "check_world_size", "check_data_size", "NullLog", "open_log", "rank_rng_file"]

log = logging.getLogger(__name__)


def wrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module the training step calls: ``DistributedDataParallel(model)`` in a process group, else ``model``.

    DDP broadcasts rank 0's parameters once (identical already: same seed, same checkpoint) and averages
    gradients of the parameters that require them. Buffers are synced once at construction, not at each forward
    (adapter training changes none), and every trainable parameter must get a gradient each step
    (``find_unused_parameters=False``).
    """
    if distributed.world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False, forward_sync_buffers=False)


def accumulation(engine: torch.nn.Module, last: bool) -> ContextManager:
    """Around one micro-batch's forward and backward: skip DDP's gradient all-reduce unless it is the step's
    ``last`` micro-batch (gradients accumulate locally, one all-reduce per optimizer step)."""
    if last or not hasattr(engine, "no_sync"):
        return contextlib.nullcontext()
    return engine.no_sync()


def global_batch_size(batch_size: int) -> int:
    """Examples per micro-step over all ranks: ``batch_size * world_size``."""
    return batch_size * distributed.world_size()


def local_part(indices: list[int], batch_size: int) -> list[int]:
    """This rank's slice of a global micro-batch: ``indices[rank*b:(rank+1)*b]``."""
    start = distributed.rank() * batch_size
    return indices[start: start + batch_size]


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """Mean of a scalar tensor over ranks (the global batch's loss); ``value`` itself in one process."""
    world = distributed.world_size()
    if world == 1:
        return value
    return distributed.all_reduce_sum(value.detach().clone()) / world


def run_info() -> dict[str, int]:
    """What a checkpoint records about the process layout: ``{"world_size": W}`` when W > 1."""
    world = distributed.world_size()
    return {"world_size": world} if world > 1 else {}


def check_world_size(saved: dict, info: dict, out_dir: Path) -> None:
    """Refuse to resume with another number of processes (the global batch, hence the trajectory, changes)."""
    before, now = saved.get("world_size", 1), info.get("world_size", 1)
    if before != now:
        raise ConfigError(f"--resume: the checkpoint in {out_dir} was trained by {before} process(es), this run has "
                          f"{now}; the global batch (--batch-size x processes) would change. Resume with "
                          f"--nproc_per_node/--num_processes giving {before} process(es)")


def check_data_size(size: int, batch_size: int) -> None:
    """Every rank needs a full slice: at least ``batch_size * world`` training examples."""
    world = distributed.world_size()
    if world == 1 and size < batch_size:
        log.warning("--batch-size %d is larger than the %d training examples: every step trains on all of them "
                    "(one step per epoch); lower --batch-size for more than one step per epoch", batch_size, size)
    if world > 1 and size < batch_size * world:
        raise ConfigError(f"{size} training examples are fewer than one global batch (--batch-size {batch_size} x "
                          f"{world} processes); lower --batch-size or use fewer processes")


class NullLog:
    """Stands in for :class:`~layerwise.train.log.TrainLog` on ranks other than 0: writes nothing."""

    def write(self, record: dict) -> None:
        """Drop ``record``."""

    def write_eval(self, step: int, metrics: dict[str, float], validation: dict[str, float] | None = None) -> None:
        """Drop the evaluation line."""

    def close(self) -> None:
        """Nothing to close."""


def open_log(path: str | os.PathLike, keep_through: int | None) -> Any:
    """The train log on rank 0 (see ``TrainLog``); a :class:`NullLog` on the other ranks."""
    from layerwise.train.log import TrainLog

    return TrainLog(path, keep_through=keep_through) if distributed.is_main() else NullLog()


def rank_rng_file(rank: int) -> str:
    """Checkpoint file of rank ``rank``'s torch RNG states (rank 0's is ``rng.safetensors``, as in one process)."""
    return "rng.safetensors" if rank == 0 else f"rng_rank{rank}.safetensors"
