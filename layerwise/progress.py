"""Progress display for long work: tqdm bars that stay quiet when output is not a terminal or in CI."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

__all__ = ["progress", "status", "enabled"]

T = TypeVar("T")


def enabled() -> bool:
    """Bars are shown on a terminal; ``LAYERWISE_PROGRESS=0/1`` forces them off or on. In a data-parallel run
    only rank 0 shows them (the launcher's ``RANK``)."""
    if os.environ.get("RANK", "0") not in ("", "0"):
        return False
    forced = os.environ.get("LAYERWISE_PROGRESS")
    if forced is not None:
        return forced not in ("0", "false", "no")
    return sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate over ``items`` with a progress bar on stderr."""
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, unit=unit, disable=not enabled(), leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """Print a one-line status for work that has no natural progress unit, and how long it took."""
    start = time.perf_counter()
    print(f"layerwise: {message} ...", file=sys.stderr, flush=True)
    yield
    print(f"layerwise: done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
