"""Tasks and their data: examples, the task registry, the registry of data sources, loading,
tokenisation/padding and calibration samples.

Importing this package is cheap: ``Collator``, ``make_batches``, ``encode_examples`` and
``generation_batches`` (which need torch) are imported from ``layerwise.data.collate`` on first use.
"""

from __future__ import annotations

from typing import Any

from layerwise.data.examples import Example, TaskData
from layerwise.data.load import load_task
from layerwise.data.sampling import sample_calibration
from layerwise.data.sources import SOURCES, TaskSource, SourceRequest, register_source, source_for
from layerwise.data.tasks import TASKS, TaskSpec, get_task

__all__ = [
    "Example", "TaskSpec", "TASKS", "get_task", "TaskData", "load_task",
    "SOURCES", "TaskSource", "SourceRequest", "register_source", "source_for",
    "Collator", "make_batches", "encode_examples", "generation_batches", "sample_calibration",
]

_COLLATE = ("Collator", "make_batches", "encode_examples", "generation_batches")


def __getattr__(name: str) -> Any:
    # collate imports torch: keep it out of the package import.
    if name in _COLLATE:
        from layerwise.data import collate

        return getattr(collate, name)
    raise AttributeError(f"module 'layerwise.data' has no attribute {name!r}")
