"""Which settings a ``--resume`` must keep, and the check that refuses a changed one.

Every field of the settings a training run is made from is sorted into one of two classes:
:data:`MUST_MATCH` (it changes what is computed: the weights after a resume would differ from an
uninterrupted run's) and :data:`MAY_CHANGE` (where files go, how often the run evaluates, saves or reports,
how many steps in all: the steps done are the same computation). ``tests/test_nothing_lost.py`` checks that
every field of every class here is in exactly one of the two, so a new field cannot be forgotten.

A fresh run records the values of the first class (:func:`resume_record`) in its ``selection.json``; a
resumed run compares them (:func:`check_resume`) before anything is loaded, naming the first flag that
differs. ``--steps`` may change with a warning (see ``layerwise.train.loop``)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from layerwise.runtime.errors import ConfigError
from layerwise.settings import AdapterChoice, Calibration, DataSource, ModelSource, SelectionChoice
from layerwise.settings.choices import AdaptiveRanks
from layerwise.settings.fields import flag_name
from layerwise.train.config import TrainConfig

__all__ = ["MUST_MATCH", "MAY_CHANGE", "RESUME_CLASSES", "resume_record", "check_resume", "read_record",
           "RECORD_KEY"]

RECORD_KEY = "resume_settings"
"""The key of :func:`resume_record` in a run's ``selection.json``."""

MUST_MATCH: dict[type, tuple[str, ...]] = {
    TrainConfig: ("lr", "weight_decay", "warmup_ratio", "scheduler", "batch_size", "grad_accum", "max_length",
                  "seed", "max_grad_norm", "pad_to", "group_by_length", "prefix_dropout", "prefix_cache",
                  "prefix_cache_dtype", "freeze", "freeze_every", "freeze_percentile", "freeze_keep_top", "freeze_start",
                  "freeze_end", "freeze_metric"),
    ModelSource: ("model", "layers_path", "dtype", "quantize"),
    DataSource: ("task", "data", "text_column", "pair_column", "label_column", "kind", "num_labels", "label_names",
                 "dev_fraction", "max_length", "train_subset", "validation_fraction"),
    SelectionChoice: ("policy", "metric", "card", "k", "share", "ratio", "exclude_first", "max_params", "max_flops",
                      "params_share", "objective", "layers", "draw"),
    AdapterChoice: ("method", "targets", "rank", "alpha", "ranks", "rank_budget", "rank_metric", "dropout",
                    "adaptive"),
    AdaptiveRanks: ("r_max", "gamma", "rank_interval", "car", "fidelity", "contribution", "rank_scale"),
    Calibration: ("samples", "seed", "batch_size", "max_length"),
}
"""Fields that change the computation: a resume with another value is refused. (``prefix_cache`` is here
because with a 16-bit ``prefix_cache_dtype`` the cache rounds what the blocks above see.)"""

MAY_CHANGE: dict[type, tuple[str, ...]] = {
    TrainConfig: ("steps", "eval_every", "dev_eval", "save_every", "early_stopping", "eval_max_examples", "gen_max_new_tokens",
                  "prefix_cache_dir", "gradient_checkpointing", "logging_steps", "report_to"),
    ModelSource: ("cache_dir", "trust_remote_code"),
    DataSource: (),
    SelectionChoice: (),
    AdapterChoice: (),
    AdaptiveRanks: (),
    Calibration: (),
}
"""Fields that do not change the weights of the steps done: the total of steps (a warning: the schedule's
end moves), evaluation, saving and logging intervals and sizes, where metrics are reported, where caches live, whether remote code may run, and
gradient checkpointing (the same forward recomputed in the backward)."""

RESUME_CLASSES = tuple(MUST_MATCH)
"""The settings classes a training run is made from."""

_PATHS = {(ModelSource, "model"), (DataSource, "data"), (SelectionChoice, "card")}
"""Fields that may name a file or folder: recorded as their real path when they exist."""


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def resume_record(*settings: Any) -> dict[str, Any]:
    """The :data:`MUST_MATCH` values of ``settings`` (instances of :data:`RESUME_CLASSES`; ``None`` skipped)
    as ``{"Class.field": value}``, JSON-ready. A nested class (``AdapterChoice.adaptive``) is recorded whole."""
    record: dict[str, Any] = {}
    for obj in settings:
        if type(obj) not in MUST_MATCH:  # None, or a stand-in of the API's own
            continue
        for name in MUST_MATCH[type(obj)]:
            value = getattr(obj, name)
            if (type(obj), name) in _PATHS and isinstance(value, str) and os.path.exists(value):
                value = os.path.realpath(value)  # the same file spelled another way is the same setting
            record[f"{type(obj).__name__}.{name}"] = _plain(value)
    return record


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The :func:`resume_record` a run wrote into its ``selection.json`` at ``path`` (``None`` for a run
    recorded before it existed, or without the file)."""
    import json

    try:
        return json.loads(Path(path).read_text()).get(RECORD_KEY)
    except (OSError, ValueError, AttributeError):
        return None


def _flag(key: str) -> str:
    cls_name, _, field = key.partition(".")
    cls = next((c for c in RESUME_CLASSES if c.__name__ == cls_name), None)
    return flag_name(cls, field) if cls is not None else field


def check_resume(saved: Mapping[str, Any] | None, now: Mapping[str, Any], out_dir: str | Path) -> None:
    """Raise :class:`ConfigError` naming the first flag whose value in ``now`` differs from ``saved`` (a
    run's :func:`resume_record`); a run recorded before this check (``saved`` None) is not compared."""
    if saved is None:
        return
    for key in sorted(set(saved) | set(now)):
        if key in saved and key in now and saved[key] != now[key]:
            raise ConfigError(f"--resume: {_flag(key)} is {_shown(now[key])} but the run in {out_dir} was trained "
                              f"with {_shown(saved[key])}; resume with the same value or start a new run")
        if (key in saved) != (key in now):
            what = key.partition(".")[0]
            raise ConfigError(f"--resume: the run in {out_dir} was trained {'with' if key in saved else 'without'} "
                              f"the {what} settings this run {'lacks' if key in saved else 'has'} (e.g. "
                              f"{_flag(key)}); resume with the same flags or start a new run")


def _shown(value: Any) -> str:
    return "not set" if value is None else repr(value)
