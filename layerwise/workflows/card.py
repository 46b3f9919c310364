"""The ``layerwise card`` job: load a model and a task, draw a calibration sample, profile, save the card."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Mapping

from layerwise.runtime.device import resolve_device
from layerwise.runtime.errors import ConfigError
from layerwise.settings import Calibration, DataSource, ModelSource, ProbeSettings

__all__ = ["Calibration", "CalibrationSpec", "calibration_batches", "calibration_info", "make_card", "resolve_device"]


CalibrationSpec = Calibration
"""The former name of :class:`layerwise.settings.Calibration` (kept for scripts)."""


def calibration_batches(task_data: Any, tokenizer: Any, spec: CalibrationSpec) -> list[dict]:
    """Draw ``spec.samples`` training examples with ``spec.seed`` and batch them with dynamic padding."""
    from layerwise.data import make_batches, sample_calibration

    if spec.samples > len(task_data.train):
        raise ConfigError(f"--samples {spec.samples} is more than the {len(task_data.train)} training examples "
                          f"of {task_data.task.name}")
    examples = sample_calibration(task_data.train, spec.samples, seed=spec.seed)
    return make_batches(examples, tokenizer, task_data.task, batch_size=spec.batch_size,
                        max_length=spec.max_length)


def calibration_info(task_data: Any, spec: Calibration) -> dict[str, Any]:
    """What the card records about its calibration sample."""
    return {"task": task_data.task.name, "source": task_data.source, "samples": spec.samples, "seed": spec.seed,
            "batch_size": spec.batch_size, "max_length": spec.max_length}


def make_card(model: ModelSource | str, data: DataSource | str | None, out: str | os.PathLike | None, *,
              calibration: Calibration = Calibration(), probe: ProbeSettings = ProbeSettings(),
              device: str | None = None, overwrite: bool = False, plots: bool = True, show_progress: bool = True,
              settings: Mapping[str, Any] | None = None) -> tuple[Any, dict[str, Path]]:
    """Profile ``model`` on ``data`` and write the card to ``out`` (``card.json``, ``card.md``, ``card.png``,
    and ``config.yaml`` with ``settings``, the command's resolved flags).

    Under ``torchrun``/``accelerate launch`` the calibration batches are split over the processes, every
    process gets the same card and only rank 0 writes the files (others return no files).

    ``data`` may be None when every metric is data-free (``--metrics weights``): the model is then loaded
    without a task head and no data is read (``layerwise.card.weight_card``).
    """
    from layerwise.runtime import distributed
    from layerwise.card import weight_card
    from layerwise.card.layer_card import estimated_card_bytes
    from layerwise.card.metrics import IMPORTANCE
    from layerwise.runtime.io import check_free_space, claim_output, write_settings
    from layerwise.models.layers import parse_targets
    from layerwise.card.profiling import profile_layers
    from layerwise.workflows.prepare import data_source, model_source

    model = model_source(model)
    data_free = weight_card.check_task(None if data is None else data_source(data).task, probe.metrics)
    dev = resolve_device(device)
    with (claim_output(out, overwrite) if out is not None else contextlib.nullcontext()) as out_dir:
        distributed.barrier()  # every rank has checked --out before rank 0 writes into it
        if out_dir is not None and distributed.is_main():
            write_settings(out_dir, settings)
        loaded, stack, batches, info = _load_for_card(model, data, dev, calibration, data_free)
        if out_dir is not None and distributed.is_main():  # before the profile, the long part
            check_free_space(out_dir, estimated_card_bytes(len(stack), len(IMPORTANCE), plots), "--out", "the card")
        card = profile_layers(loaded.model, batches, probe.metrics, name=model.model, stack=stack, data_info=info,
                              rank=probe.rank, targets=parse_targets(probe.targets), pooling=probe.pooling_or_none,
                              device=dev, weightdelta_steps=probe.weightdelta_steps, seed=calibration.seed,
                              max_stat_memory=probe.max_stat_memory, show_progress=show_progress)
        files = card.save(out_dir, plots=plots) if out_dir is not None and distributed.is_main() else {}
        distributed.barrier()  # the card exists for every rank (``layerwise run`` reads it next)
        return card, files


def _load_for_card(model: ModelSource, data: DataSource | str | None, dev: Any, calibration: Calibration,
                   data_free: bool) -> tuple[Any, Any, list, dict]:
    """(loaded model, layer stack, calibration batches, data info); ``data=None`` is a data-free card (weight
    metrics only): no task, no head, no batches."""
    from layerwise.card import weight_card
    from layerwise.models.layers import find_layer_stack
    from layerwise.workflows.prepare import load_precision, load_source, prepare

    if data is None:
        # the model without a task head (its fingerprint is the same as with any head), no batches
        loaded = load_source(model, dev, load_precision(model, dev), head="base")
        batches, info = [], dict(weight_card.DATA_FREE_INFO)
        return loaded, find_layer_stack(loaded.model, model.layers_path), batches, info
    ready = prepare(model, data, dev)
    batches = [] if data_free else calibration_batches(ready.task, ready.loaded.tokenizer, calibration)
    info = {**calibration_info(ready.task, calibration), **({"samples": 0} if data_free else {})}
    return ready.loaded, ready.stack, batches, info
