"""A bench's folder: its layout, the settings a resumed bench must share, and training its cells.

Layout of a bench's ``out``::

    bench_config.json        what the cells were trained with (a resumed bench must match it)
    model.json               parameter count of the model with its task head
    card/                    the Layer Card (calibration seed 0) shared by every card-based method
    prefix_cache/            frozen-prefix caches, shared by every cell with the same lowest adapted block
    cells/<method>/seed<s>/  one training run (``layerwise train`` outputs; ``metrics.json`` when finished)
    cells/<method>/inference.json  inference cost of the method's adapter (its first seed's weights)
    bench.json, bench.md, bench_*.png, config.yaml

Finished cells are not trained again; a cell with a checkpoint resumes from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from layerwise.bench.aggregate import CELL_FILE
from layerwise.bench.methods import CellJob
from layerwise.runtime.errors import ConfigError
from layerwise.settings import Calibration, DataSource, ModelSource

__all__ = ["claim_bench", "prepare_out", "cell_dir", "bench_config", "check_resume", "run_cells", "duration",
           "CARD_DIR", "CELLS_DIR", "PREFIX_CACHE_DIR", "CONFIG_FILE", "MODEL_FILE", "INFERENCE_FILE"]

CARD_DIR, CELLS_DIR, PREFIX_CACHE_DIR = "card", "cells", "prefix_cache"
CONFIG_FILE, MODEL_FILE, INFERENCE_FILE = "bench_config.json", "model.json", "inference.json"


def cell_dir(out: Path, method: str, seed: int) -> Path:
    """The folder of cell (``method``, ``seed``)."""
    return out / CELLS_DIR / method / f"seed{seed}"


def prepare_out(out: Path, overwrite: bool) -> Path:
    """An existing bench folder is resumed; ``overwrite`` deletes the bench's own outputs there first."""
    from layerwise.runtime.io import prepare_output_dir

    if out.is_dir() and overwrite:
        _remove(_bench_entries(out))
    if not overwrite and out.is_dir() and any(out.iterdir()) and not (out / CONFIG_FILE).exists():
        raise ConfigError(f"--out {out} exists, is not empty and holds no bench ({CONFIG_FILE}); choose another "
                          "--out or pass --overwrite")
    return prepare_output_dir(out, overwrite=True)


def _bench_entries(out: Path) -> list[Path]:
    """The bench's own outputs in ``out`` (a user's other files there are not the bench's)."""
    from layerwise.runtime.io import SETTINGS_NAME

    named = [out / n for n in (CELLS_DIR, CARD_DIR, PREFIX_CACHE_DIR, CONFIG_FILE, MODEL_FILE, SETTINGS_NAME)]
    globbed = [*out.glob("bench*.json"), *out.glob("bench*.md"), *out.glob("bench*.png")]
    return [p for p in dict.fromkeys([*named, *globbed]) if p.exists()]


def _remove(entries: list[Path]) -> None:
    for entry in entries:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _has_progress(out: Path) -> bool:
    """Whether a cell of the new bench finished or can be resumed (then a failure keeps the new bench)."""
    return any(out.glob(f"{CELLS_DIR}/*/seed*/metrics.json")) or any(out.glob(f"{CELLS_DIR}/*/seed*/checkpoint"))


@contextlib.contextmanager
def claim_bench(out: Path, overwrite: bool) -> Iterator[Path]:
    """The bench's folder for one ``layerwise bench`` call, so that it always holds one bench.

    An existing bench is resumed. With ``overwrite`` its outputs are first moved aside (a hidden folder in
    ``out``) rather than deleted; if the new bench fails before any cell finished or saved a checkpoint, its
    files are removed and the old bench is put back, else (and on success) the old one is deleted. A folder
    this call created is removed when the bench fails with nothing to resume."""
    import secrets

    existed = out.is_dir()
    aside = None
    entries = _bench_entries(out) if existed and overwrite else []
    if entries:
        aside = out / f".previous-bench-{secrets.token_hex(4)}"
        aside.mkdir()
        for entry in entries:
            os.replace(entry, aside / entry.name)
    try:
        yield prepare_out(out, overwrite)
    except BaseException:
        if (aside is not None or not existed) and not _has_progress(out):  # a resumed bench is left as it was
            _remove(_bench_entries(out))
            if aside is not None:
                for entry in aside.iterdir():
                    os.replace(entry, out / entry.name)
            elif not existed:
                shutil.rmtree(out, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def bench_config(model: ModelSource, data: DataSource, train_config: Any, rank: int, targets: str,
                 calibration: Calibration) -> dict[str, Any]:
    """What shapes every cell's result: a resumed bench must use the same values (seeds/methods may change)."""
    # where and how the frozen prefix is cached does not change a cell's result (an fp32 cache is exact; its
    # storage dtype does and stays in the record); --dev-eval only decides when the dev set is scored, and the
    # score at the chosen step is the same number either way
    train = {k: v for k, v in train_config.to_dict().items()
             if k not in ("seed", "prefix_cache", "prefix_cache_dir", "dev_eval")}
    path = data.data
    if path is not None and Path(path).exists():
        path = str(Path(path).resolve())  # the same folder however it was written
    config = {"model": model.model, "task": data.task, "data": path, "train_config": train, "rank": rank,
              "targets": targets, "calibration": asdict(calibration), "columns": data.columns,
              "regression": data.kind == "regression",
              "carving": {"train_subset": data.train_subset, "validation_fraction": data.validation_fraction,
                          "max_length": data.max_length},
              "precision": {"dtype": model.dtype, "quantize": model.quantize}}
    if data.kind not in (None, "regression"):
        config["kind"] = data.kind
    return config


def check_resume(out: Path, config: dict[str, Any]) -> None:
    """Refuse to resume a bench trained with other values; record the config of a new one."""
    from layerwise.runtime.io import atomic_write_json
    from layerwise.train.config import flag_name

    path = out / CONFIG_FILE
    if not path.exists():
        atomic_write_json(path, config)
        return
    before = json.loads(path.read_text())
    flat_new, flat_old = _flatten(config), _flatten(before)
    # A training field added after the bench was made is absent from its record; at its default it
    # changes nothing (an older layerwise trained every cell that way).
    defaults = _train_defaults()
    changed = sorted(k for k in set(flat_new) | set(flat_old) if flat_new.get(k) != flat_old.get(k)
                     and not (k not in flat_old and k in defaults and flat_new[k] == defaults[k]))
    if changed:
        shown = "; ".join(f"{flag_name(k.split('.')[-1])} is {flat_new.get(k)!r}, was {flat_old.get(k)!r}"
                          for k in changed)
        raise ConfigError(f"--out {out} holds a bench made with other settings ({shown}); resume with the same "
                          "flags or pass --overwrite to start fresh")


def _train_defaults() -> dict[str, Any]:
    """``{"train_config.<field>": default}`` for the TrainConfig fields that have one, and the defaults of the
    data carving and model precision settings (recorded since 2026-11-29)."""
    from dataclasses import MISSING, fields

    from layerwise.settings import DataSource, ModelSource
    from layerwise.train import TrainConfig

    out = {f"train_config.{f.name}": f.default for f in fields(TrainConfig) if f.default is not MISSING}
    data, model = DataSource(), ModelSource()
    out.update({"carving.train_subset": data.train_subset, "carving.validation_fraction": data.validation_fraction,
                "carving.max_length": data.max_length, "precision.dtype": model.dtype,
                "precision.quantize": model.quantize})
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "columns":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def run_cells(out: Path, jobs: Sequence[CellJob], train_one: Callable[[CellJob, Path, bool], None],
              say: Callable[[str], None]) -> None:
    """Train every unfinished cell with ``train_one(job, cell_dir, resume)`` (a cell with a checkpoint
    resumes), recording its wall time; a line per cell says its place, cells done and the time left."""
    from layerwise.runtime.io import atomic_write_json
    from layerwise.train.checkpoint import find_checkpoint

    todo = [j for j in jobs if not (cell_dir(out, j.method, j.train_config.seed) / "metrics.json").exists()]
    durations = [d for d in (_recorded_seconds(out, j) for j in jobs if j not in todo) if d is not None]
    done = len(jobs) - len(todo)
    for job in todo:
        left = f", about {duration(statistics.fmean(durations) * (len(jobs) - done))} left" if durations else ""
        say(f"[{done + 1}/{len(jobs)}] {job.method} seed {job.train_config.seed} ({done} done{left})")
        cell = cell_dir(out, job.method, job.train_config.seed)
        resume = find_checkpoint(cell) is not None
        start = time.perf_counter()
        train_one(job, cell, resume)
        seconds = time.perf_counter() - start
        atomic_write_json(cell / CELL_FILE, {"method": job.method, "seed": job.train_config.seed,
                                             "resumed": resume, "wall_seconds": seconds})
        durations.append(seconds)
        done += 1
    say(f"{len(jobs)}/{len(jobs)} cells done")


def _recorded_seconds(out: Path, job: CellJob) -> float | None:
    path = cell_dir(out, job.method, job.train_config.seed) / CELL_FILE
    return json.loads(path.read_text()).get("wall_seconds") if path.exists() else None


def duration(seconds: float) -> str:
    """``1m05s``, or ``2h03m`` from an hour on."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
