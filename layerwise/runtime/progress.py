"""Progress display for long work: tqdm bars that stay quiet when output is not a terminal or in CI, and
status lines for work without a progress unit (logged: the ``layerwise`` command shows them on stderr)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

__all__ = ["progress", "status", "enabled"]

log = logging.getLogger(__name__)

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
    """Log (at INFO) a one-line status for work that has no natural progress unit, and how long it took."""
    start = time.perf_counter()
    log.info("%s ...", message)
    yield
    log.info("done in %.1fs", time.perf_counter() - start)
