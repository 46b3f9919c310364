"""Benchmark results as data: one small JSON file per finished cell, so runs continue across sessions.

Layout: ``<root>/<model>-<task>/<cell>.json``, one file per finished (method, seed, learning rate) cell. A cell's
file is written once, atomically (a temporary file renamed onto the name), and only when the cell finished;
its presence is what "finished" means, so a runner skips the cells whose files exist and an interrupted run
leaves no half-written result. A record holds, besides the scores, what produced them (config, machine, git
commit, date); a field an older run did not record is ``None`` and named in ``unrecorded``.

A record (schema :data:`RESULT_SCHEMA`)::

    {"schema": 1, "model", "task", "cell", "method", "seed", "lr", "config": {...},
     "evaluations": [{"step", "flops", "seconds", "validation": {metric: value}, "dev": {metric: value}}],
     "chosen": {"step", "by": "validation", "validation": {...}, "dev": {...}},
     "main_metric", "higher_is_better", "layers", "ranks", "trainable_params", "total_flops", "total_seconds",
     "machine", "commit", "date", "unrecorded": [...], "notes": "..."}
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from layerwise.runtime.errors import ConfigError, DataError

__all__ = ["RESULT_SCHEMA", "REQUIRED_FIELDS", "cell_name", "result_path", "is_finished", "write_result",
           "read_result", "load_results", "choose_step", "machine_info"]

RESULT_SCHEMA = 1
"""Version of a cell's result file."""

REQUIRED_FIELDS = ("schema", "model", "task", "cell", "method", "seed", "lr", "config", "evaluations", "chosen",
                   "main_metric", "higher_is_better", "layers", "ranks", "trainable_params", "machine", "commit",
                   "date", "unrecorded")
"""Keys every record has (a value may be ``None`` when the run did not record it; it is then in ``unrecorded``)."""

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def cell_name(method: str, seed: int, lr: float | None) -> str:
    """The file stem of a cell: ``<method>-s<seed>-lr<lr>`` (``lr`` as ``%g``; ``lrNA`` when unknown)."""
    rate = "NA" if lr is None else f"{lr:g}"
    return f"{method}-s{seed}-lr{rate}"


def _safe(part: str, what: str) -> str:
    if not _SAFE.match(part):
        raise ConfigError(f"result {what} {part!r} may hold only letters, digits and . _ + - (it names a file)")
    return part


def result_path(root: str | os.PathLike, model: str, task: str, cell: str) -> Path:
    """``<root>/<model>-<task>/<cell>.json``."""
    return Path(root) / f"{_safe(model, 'model')}-{_safe(task, 'task')}" / f"{_safe(cell, 'cell')}.json"


def is_finished(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a readable result (a runner skips that cell)."""
    try:
        read_result(path)
    except (DataError, FileNotFoundError):
        return False
    return True


def _check(record: dict[str, Any], where: str) -> None:
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        raise DataError(f"{where}: result lacks {', '.join(missing)} (schema {RESULT_SCHEMA} needs "
                        f"{', '.join(REQUIRED_FIELDS)})")
    if record["schema"] != RESULT_SCHEMA:
        raise DataError(f"{where}: result schema {record['schema']!r}, this layerwise reads {RESULT_SCHEMA}")
    unknown = [k for k in record["unrecorded"] if k not in record]
    if unknown:
        raise DataError(f"{where}: unrecorded names fields the record does not have: {', '.join(unknown)}")
    for e in record["evaluations"]:
        if "step" not in e:
            raise DataError(f"{where}: an evaluation has no step")


def write_result(path: str | os.PathLike, record: dict[str, Any], overwrite: bool = False) -> Path:
    """Write ``record`` to ``path`` atomically; an existing result is never replaced unless ``overwrite``."""
    from layerwise.runtime.io import atomic_write_json

    path = Path(path)
    record = {"schema": RESULT_SCHEMA, **record}
    _check(record, str(path))
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already holds a finished cell; delete it to run the cell again")
    return atomic_write_json(path, record)


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """A result file, checked (:class:`DataError` naming the file when it is not a result)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not JSON ({err})") from err
    if not isinstance(record, dict):
        raise DataError(f"{path}: a result is a JSON object")
    _check(record, str(path))
    return record


def load_results(root: str | os.PathLike, model: str | None = None, task: str | None = None,
                 folder: str | None = None) -> list[dict[str, Any]]:
    """Every result under ``root`` (optionally of one model and task), sorted by folder and file name.

    ``folder`` reads only ``root/<folder>`` (e.g. ``smollm2-135m-sst2``): other folders under ``root`` may hold
    other kinds of records (``benchmarks/results/freeze`` holds lockstep comparisons, not cells)."""
    root = Path(root)
    if folder is not None:
        folders = [root / folder] if (root / folder).is_dir() else []
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    out = []
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            record = read_result(path)
            if (model is None or record["model"] == model) and (task is None or record["task"] == task):
                out.append(record)
    return out


def choose_step(evaluations: Iterable[dict[str, Any]], metric: str, higher_is_better: bool = True) -> dict | None:
    """The evaluation with the best validation ``metric`` (the earliest among equals); ``None`` without one."""
    best = None
    sign = 1.0 if higher_is_better else -1.0
    for e in evaluations:
        value = (e.get("validation") or {}).get(metric)
        if value is None:
            continue
        if best is None or sign * value > sign * best["validation"][metric]:
            best = e
    return best


def machine_info() -> dict[str, Any]:
    """What ran the cell: host name, CPU model, cores this process may use, torch version."""
    import platform

    import torch

    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"host": platform.node(), "cpu": cpu, "cores": cores, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
