"""Process-group helpers for data-parallel runs under ``torchrun`` or ``accelerate launch``.

A launcher starts one process per device and tells each one who it is through the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`init_from_env` joins that group
(gloo on the CPU, NCCL on CUDA). Everything else here works in one process too, where it does nothing:
``world_size() == 1``, ``is_main()`` is true, reductions return their input, ``shard`` returns everything.

    dev = device_for_rank(torch.device("cuda"))   # cuda:LOCAL_RANK under a launcher
    init_from_env(dev)
    mine = shard(batches)                         # batches i with i % world == rank
    ...
    all_reduce_sum(totals)                        # every rank holds the global sums
    if is_main():
        save(...)                                 # one writer
    barrier()                                     # the others wait until the files exist

Collectives must be called by every rank in the same order; helpers that run work on rank 0 only
(:func:`run_on_main`) send the result, or rank 0's error, to the others so no rank is left waiting.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import os
from typing import Any, Callable, Sequence, TypeVar

import torch

__all__ = ["ENV_VARS", "TIMEOUT_ENV", "launched", "env_rank", "init_from_env", "is_initialized", "rank",
           "world_size", "local_rank", "is_main", "device_for_rank", "barrier", "all_reduce_sum", "all_reduce_max",
           "all_gather_objects", "broadcast_object", "run_on_main", "main_only", "shard", "shard_indices",
           "unshard", "any_rank", "RankError"]

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun and ``accelerate launch`` set in every process they start."""

TIMEOUT_ENV = "LAYERWISE_DIST_TIMEOUT"
"""Seconds a collective may wait for the other ranks (default 3600): rank 0 evaluates alone while the others
wait, and a long generation evaluation must not trip the watchdog (NCCL's own default is 10 minutes)."""

T = TypeVar("T")


class RankError(RuntimeError):
    """Raised on the other ranks when work that ran on rank 0 only (:func:`run_on_main`) failed there."""


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def launched() -> bool:
    """True when a launcher started this process as one of several (``WORLD_SIZE`` > 1 and ``RANK`` set).

    ``accelerate launch`` without a multi-process mode runs one process and sets only ``MASTER_*``: that is
    a single-process run.
    """
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def env_rank() -> int:
    """This process's rank as the launcher set it (0 without a launcher); no process group needed."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_initialized() -> bool:
    """True inside a process group of more than one process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the group (0 in one process)."""
    return _dist().get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 in one process)."""
    return _dist().get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``; 0 without a launcher)."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def is_main() -> bool:
    """True on rank 0, the one process that writes files and prints results."""
    return rank() == 0


def device_for_rank(device: torch.device) -> torch.device:
    """Under a launcher a bare ``cuda`` means ``cuda:LOCAL_RANK`` (one GPU per process); others are unchanged."""
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", local_rank())
    return device


def init_from_env(device: Any = None) -> bool:
    """Join the process group a launcher described in the environment; True when in one (idempotent).

    The backend is NCCL when ``device`` is a CUDA device (made the current device) and gloo otherwise. Does
    nothing and returns False without a launcher. The group is destroyed at exit.
    """
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if not launched():
        return False
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(device_for_rank(dev))
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "3600")))
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=timeout)
    atexit.register(_destroy)
    return True


def _destroy() -> None:
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (no-op in one process)."""
    if is_initialized():
        _dist().barrier()


def _comm_device() -> torch.device:
    """Where the backend wants tensors: the current CUDA device for NCCL, the CPU for gloo."""
    if _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(tensor: torch.Tensor, op: Any) -> torch.Tensor:
    if not is_initialized():
        return tensor
    dev = _comm_device()
    work = tensor if tensor.device == dev else tensor.to(dev)
    _dist().all_reduce(work, op=op)
    if work is not tensor:
        tensor.copy_(work)
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (any device, any dtype the backend sums) and return it."""
    return _all_reduce(tensor, _dist().ReduceOp.SUM if is_initialized() else None)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``tensor`` over ranks, in place; returns it."""
    return _all_reduce(tensor, _dist().ReduceOp.MAX if is_initialized() else None)


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on any rank (every rank gets the same answer)."""
    if not is_initialized():
        return bool(flag)
    return bool(all_reduce_max(torch.tensor([int(bool(flag))], dtype=torch.int64)).item())


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` in one process."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` itself in one process."""
    if not is_initialized():
        return obj
    box = [obj if rank() == src else None]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def run_on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` on rank 0 only and give its (picklable) result to every rank.

    If ``fn`` raises on rank 0, the error is re-raised there and a :class:`RankError` naming it on the
    other ranks, so none waits forever.
    """
    if not is_initialized():
        return fn(*args, **kwargs)
    outcome: tuple[bool, Any] = (True, None)
    if is_main():
        try:
            outcome = (True, fn(*args, **kwargs))
        except BaseException as err:
            broadcast_object((False, f"{type(err).__name__}: {err}"))
            raise
    ok, value = broadcast_object(outcome)
    if not ok:
        raise RankError(f"rank 0 failed in {getattr(fn, '__name__', 'a task')}: {value}")
    return value


def main_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorator for file writes: ``fn`` runs on rank 0 only; the other ranks return ``None`` at once.

    No barrier is implied: call :func:`barrier` where the other ranks must see the files.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


def shard_indices(n: int, contiguous: bool = False, rank_: int | None = None, world: int | None = None) -> list[int]:
    """Indices of ``n`` items this rank takes: ``i % world == rank`` (strided), or one contiguous block
    (the first ``n % world`` ranks take one more). Every index goes to exactly one rank."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if not contiguous:
        return list(range(r, n, w))
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return list(range(start, start + base + (1 if r < extra else 0)))


def shard(items: Sequence[T], contiguous: bool = False) -> list[T]:
    """This rank's part of ``items`` (see :func:`shard_indices`); all of them in one process."""
    return [items[i] for i in shard_indices(len(items), contiguous)]


def unshard(parts: Sequence[Sequence[T]], contiguous: bool = False) -> list[T]:
    """Inverse of :func:`shard`: the per-rank parts (in rank order) back in global order."""
    world, n = len(parts), sum(len(p) for p in parts)
    out: list[Any] = [None] * n
    for r, part in enumerate(parts):
        idx = shard_indices(n, contiguous, r, world)
        assert len(idx) == len(part), (r, len(idx), len(part))
        for i, item in zip(idx, part):
            out[i] = item
    return out
