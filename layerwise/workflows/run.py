"""The ``layerwise run`` main job: card, selection, training of the selected adapter, the uniform-LoRA
baseline with the same steps and seed, and the comparison report. Finished stages are not run again
with ``--resume``."""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Mapping

from layerwise.runtime.errors import ConfigError
from layerwise.settings import AdapterChoice, Calibration, DataSource, ModelSource, ProbeSettings, SelectionChoice

__all__ = ["run_pipeline"]


def run_pipeline(model: ModelSource | str, data: DataSource | str, out: str | os.PathLike, *, train_config: Any,
                 selection: SelectionChoice | None = None, adapter: AdapterChoice = AdapterChoice(),
                 calibration: Calibration = Calibration(), probe: ProbeSettings | None = None,
                 device: str | None = None, resume: bool = False, overwrite: bool = False,
                 show_progress: bool = True, side_by_side: bool = False,
                 settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the whole job into ``out``: card/, selected/, uniform/, report.{json,md,png} and config.yaml
    (with ``settings``, the command's resolved flags). Returns the report.

    The card prices the adapter's rank and targets (``probe``'s are taken from ``adapter``). Without
    ``selection``, the measured default: :data:`~layerwise.settings.defaults.CARD_POLICY` ranked by
    :data:`~layerwise.settings.defaults.CARD_METRIC`.

    ``side_by_side`` trains the selection and uniform LoRA in lockstep (one step of each in turn, see
    :mod:`layerwise.train.lockstep`), so that a drift in machine speed cannot skew the time ratio; both
    models are then in memory at once. Under ``torchrun``/``accelerate launch`` every stage is data
    parallel and only rank 0 writes.
    """
    from layerwise.runtime import distributed
    from layerwise.runtime.io import check_leftovers, claim_output
    from layerwise.workflows.card import resolve_device

    if selection is None:
        from layerwise.settings import defaults

        selection = SelectionChoice(defaults.CARD_POLICY, metric=defaults.CARD_METRIC)
    resolve_device(device)  # joins the process group under torchrun / accelerate launch
    if side_by_side and distributed.world_size() > 1:
        raise ConfigError("--side-by-side trains two runs in one process; it cannot be combined with "
                          "torchrun / accelerate launch (drop one of them)")
    out_dir = Path(out)
    if resume:
        check_leftovers(out_dir, resume=True)  # an old run a killed --overwrite left aside: named, kept
    with contextlib.nullcontext(out_dir) if resume else claim_output(out_dir, overwrite):
        return _pipeline(model, data, out_dir, train_config, selection, adapter, calibration, probe, device, resume,
                         show_progress, side_by_side, settings)


def _pipeline(model: ModelSource | str, data: DataSource | str, out_dir: Path, train_config: Any,
              selection: SelectionChoice, adapter: AdapterChoice, calibration: Calibration,
              probe: ProbeSettings | None, device: str | None, resume: bool, show_progress: bool,
              side_by_side: bool, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The stages of :func:`run_pipeline` in a claimed ``out_dir``."""
    from layerwise.runtime import distributed
    from layerwise.runtime.io import write_settings
    from layerwise.evaluate.report import collect_run, compare, write_report
    from layerwise.workflows.card import make_card
    from layerwise.workflows.prepare import data_source, model_source

    distributed.barrier()  # every rank has checked --out before rank 0 writes into it
    if distributed.is_main():
        write_settings(out_dir, settings)
    model, data = model_source(model), data_source(data)
    probe = replace(probe or ProbeSettings(), rank=adapter.rank, targets=adapter.targets)
    card_file = out_dir / "card" / "card.json"
    if not card_file.exists():
        _stage("1/4 Layer Card")
        make_card(model, data, out_dir / "card", calibration=calibration, probe=probe, device=device,
                  overwrite=True, show_progress=show_progress)
    runs = {"selected": replace(selection, card=str(card_file)), "uniform": selection.uniform()}
    # uniform LoRA is the baseline: --rank on every layer, without the selection's --rank-budget split
    adapters = {"selected": adapter, "uniform": replace(adapter, rank_budget=None, rank_metric=None)}
    jobs = {}
    for label, choice in runs.items():
        if not (out_dir / label / "metrics.json").exists():
            again = resume and (out_dir / label / "checkpoint").exists()
            jobs[label] = _training(model, data, out_dir / label, choice, train_config, adapters[label], again,
                                    show_progress, device)
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
    from layerwise.evaluate.baseline import scored_majority

    context = {"model": model.model, "task": data.task, "data": data.data,
               "majority": scored_majority(data.load(), train_config.eval_max_examples),
               "selection": _describe(out_dir / "selected"), "train_config": train_config.to_dict(),
               "adapter": asdict(adapter),
               "trained": _how_trained(jobs, lockstep)}
    files = write_report(out_dir, rows, context) if distributed.is_main() else {}
    return {"rows": rows, "context": context, "files": {k: str(v) for k, v in files.items()}}


def _training(model: ModelSource, data: DataSource, out: Path, choice: SelectionChoice, train_config: Any,
              adapter: AdapterChoice, resume: bool, show_progress: bool, device: str | None) -> Any:
    """``job(callbacks)``: one ``train_job`` of the pipeline, ready to run alone or in lockstep."""
    from layerwise.workflows.train import train_job

    return lambda callbacks: train_job(model, data, out, train_config=train_config, selection=choice,
                                       adapter=adapter, device=device, resume=resume, overwrite=True,
                                       show_progress=show_progress, callbacks=callbacks)


def _how_trained(jobs: dict, lockstep: bool) -> str | None:
    """How this call trained the runs, for the report (None: both were finished before it)."""
    if not jobs:
        return None
    return "side by side, in lockstep" if lockstep else "one after the other"


def _describe(run_dir: Path) -> str:
    import json

    from layerwise.selection.policies import Selection

    sel = json.loads((run_dir / "selection.json").read_text())["selection"]
    return Selection.from_dict(sel).describe()


def _stage(text: str) -> None:
    import logging

    from layerwise.runtime import distributed

    if distributed.is_main():
        logging.getLogger(__name__).info(text)
