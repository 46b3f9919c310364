"""``train_log.jsonl``: one JSON line per optimizer step and one per evaluation, flushed as it goes.

Step lines: ``{"step", "loss", "lr", "<phase>_s", "mem_after_<phase>", "peak_memory", "step_s", "shapes"}``;
evaluation lines: ``{"step", "eval": {metric: value}}``; with ``--freeze``, one line after each step that froze
blocks: ``{"step", "freeze": {"frozen", "trainable", "fill_s"}}`` (blocks frozen in all, blocks still training,
seconds of this step's cache fills). Non-finite numbers are written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from layerwise.runtime.io import atomic_write_text

__all__ = ["TrainLog", "read_log", "step_lines", "eval_lines", "freeze_lines", "json_safe"]


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by ``None`` (JSON has no NaN) and tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class TrainLog:
    """Appends lines to ``path``. ``keep_through`` (a resumed run's step) first drops lines of later steps;
    ``None`` starts an empty log."""

    def __init__(self, path: str | os.PathLike, keep_through: int | None = None) -> None:
        self.path = Path(path)
        kept = [] if keep_through is None else [r for r in read_log(self.path) if r.get("step", 0) <= keep_through]
        atomic_write_text(self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        """Append one line and flush it (a crash loses at most the line being written)."""
        self._file.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        self._file.flush()

    def write_eval(self, step: int, metrics: dict[str, float],
                   validation: dict[str, float] | None = None) -> None:
        """Append an evaluation line (dev metrics under ``eval``, validation metrics under ``validation``)."""
        self.write({"step": step, "eval": metrics, **({"validation": validation} if validation is not None else {})})

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._file.close()


def read_log(path: str | os.PathLike) -> list[dict]:
    """Every complete line of a train log (a torn last line from a crash is skipped); [] if it is missing."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def step_lines(records: list[dict]) -> list[dict]:
    """The per-step lines of a log."""
    return [r for r in records if "loss" in r]


def eval_lines(records: list[dict]) -> list[dict]:
    """The evaluation lines of a log."""
    return [r for r in records if "eval" in r]


def freeze_lines(records: list[dict]) -> list[dict]:
    """The freezing lines of a log (``--freeze``: the steps after which blocks froze)."""
    return [r for r in records if "freeze" in r]
