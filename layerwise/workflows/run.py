"""The ``layerwise run`` main job: card, selection, training of the selected adapter, the uniform-LoRA
baseline with the same steps and seed, and the comparison report. Finished stages are not run again
with ``--resume``."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from layerwise.errors import ConfigError

__all__ = ["run_pipeline"]


def run_pipeline(model: str, task: str, data: str | None, out: str | os.PathLike, *, train_config: Any,
                 selection: Any, adapter: Any, calibration: Any, metrics: str | None = None,
                 columns: dict[str, str | None] | None = None, regression: bool = False, cache_dir: str | None = None,
                 trust_remote_code: bool = False, layers_path: str | None = None, device: str | None = None,
                 resume: bool = False, overwrite: bool = False, show_progress: bool = True,
                 side_by_side: bool = False) -> dict[str, Any]:
    """Run the whole job into ``out``: card/, selected/, uniform/, report.{json,md,png}. Returns the report.

    ``side_by_side`` trains the selection and uniform LoRA in lockstep (one step of each in turn, see
    :mod:`layerwise.train.lockstep`), so that a drift in machine speed cannot skew the time ratio; both
    models are then in memory at once. Under ``torchrun``/``accelerate launch`` every stage is data
    parallel and only rank 0 writes.
    """
    from layerwise import distributed
    from layerwise.io import prepare_output_dir
    from layerwise.report import collect_run, compare, write_report
    from layerwise.workflows.card import make_card, resolve_device

    resolve_device(device)  # joins the process group under torchrun / accelerate launch
    if side_by_side and distributed.world_size() > 1:
        raise ConfigError("--side-by-side trains two runs in one process; it cannot be combined with "
                          "torchrun / accelerate launch (drop one of them)")
    out_dir = Path(out)
    if not resume:
        prepare_output_dir(out_dir, overwrite)
    distributed.barrier()  # every rank has checked --out before rank 0 writes into it
    common = dict(columns=columns, regression=regression, cache_dir=cache_dir, trust_remote_code=trust_remote_code,
                  layers_path=layers_path, device=device)
    card_file = out_dir / "card" / "card.json"
    if not card_file.exists():
        _stage("1/4 Layer Card")
        make_card(model, task, data, out_dir / "card", calibration=calibration, metrics=metrics, rank=adapter.rank,
                  targets=adapter.targets, overwrite=True, show_progress=show_progress, **common)
    runs = {"selected": replace(selection, card=str(card_file)), "uniform": replace(selection, policy="all",
                                                                                    card=None, options={})}
    jobs = {}
    for label, choice in runs.items():
        if not (out_dir / label / "metrics.json").exists():
            again = resume and (out_dir / label / "checkpoint").exists()
            jobs[label] = _training(model, task, data, out_dir / label, choice, train_config, adapter, again,
                                    show_progress, common)
    lockstep = side_by_side and len(jobs) > 1
    if lockstep:
        from layerwise.train.lockstep import Lockstep

        _stage("2-3/4 training " + " and ".join(f"{k} ({runs[k].policy})" for k in jobs) + " side by side")
        Lockstep(len(jobs)).run([lambda turn, job=job: job([turn]) for job in jobs.values()])
    else:
        for label, job in jobs.items():
            _stage(f"{list(runs).index(label) + 2}/4 training {label} ({runs[label].policy})")
            job([])
    _stage("4/4 report")
    baseline = collect_run(out_dir / "uniform", "uniform LoRA")
    selected = collect_run(out_dir / "selected", f"{selection.policy}")
    rows = compare([selected, baseline], baseline)
    context = {"model": model, "task": task, "data": data, "selection": _describe(out_dir / "selected"),
               "train_config": train_config.to_dict(), "adapter": adapter.__dict__,
               "trained": _how_trained(jobs, lockstep)}
    files = write_report(out_dir, rows, context) if distributed.is_main() else {}
    return {"rows": rows, "context": context, "files": {k: str(v) for k, v in files.items()}}


def _training(model: str, task: str, data: str | None, out: Path, choice: Any, train_config: Any, adapter: Any,
              resume: bool, show_progress: bool, common: dict) -> Any:
    """``job(callbacks)``: one ``train_job`` of the pipeline, ready to run alone or in lockstep."""
    from layerwise.workflows.train import train_job

    return lambda callbacks: train_job(model, task, data, out, train_config=train_config, selection=choice,
                                       adapter=adapter, resume=resume, overwrite=True, show_progress=show_progress,
                                       callbacks=callbacks, **common)


def _how_trained(jobs: dict, lockstep: bool) -> str | None:
    """How this call trained the runs, for the report (None: both were finished before it)."""
    if not jobs:
        return None
    return "side by side, in lockstep" if lockstep else "one after the other"


def _describe(run_dir: Path) -> str:
    import json

    from layerwise.selection import Selection

    sel = json.loads((run_dir / "selection.json").read_text())["selection"]
    return Selection.from_dict(sel).describe()


def _stage(text: str) -> None:
    import logging

    from layerwise import distributed

    if distributed.is_main():
        logging.getLogger(__name__).info(text)
