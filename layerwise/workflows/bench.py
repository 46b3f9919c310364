"""The ``layerwise bench`` job: every method on the same data, steps and seeds, as one table in the manner of
Act-LoRA's Tables 4-6 (score, trainable parameters, time per phase, peak memory, each against uniform LoRA),
with the inference cost of each adapter unmerged and merged (La-LoRA's Table 13) and a sweep over k of the
top-k methods (Act-LoRA's Table 7). The parts live in :mod:`layerwise.bench`; the folder layout is in
:mod:`layerwise.bench.cells`.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from layerwise.bench.aggregate import aggregate, collect_cell
from layerwise.bench.cells import (CARD_DIR, MODEL_FILE, PREFIX_CACHE_DIR, bench_config, cell_dir, check_resume,
                                   claim_bench, run_cells)
from layerwise.bench.methods import BASELINE, BENCH_METHODS, BenchSettings, CellJob, build_cell, find_method, \
    resolve_methods
from layerwise.settings import AdapterChoice, BenchOptions, Calibration, DataSource, ModelSource

__all__ = ["run_bench", "BENCH_SCHEMA"]

BENCH_SCHEMA = 1
"""Version of ``bench.json``."""


def run_bench(model: ModelSource | str, data: DataSource | str, out: str | os.PathLike, *, train_config: Any,
              bench: BenchOptions = BenchOptions(), adapter: AdapterChoice = AdapterChoice(),
              calibration: Calibration | None = None, device: str | None = None, overwrite: bool = False,
              show_progress: bool = True, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train every (method, seed) cell into ``out`` (resuming an existing ``out``), measure each method's
    inference cost, and write bench.json, bench.md, bench_*.png and config.yaml (``settings``). Returns the
    bench.json content. Every adapter cell uses ``adapter``'s rank and targets and ``train_config``; full
    fine-tuning uses ``bench.full_lr``."""
    from layerwise.bench.render import write_bench
    from layerwise.runtime.io import write_settings
    from layerwise.workflows.prepare import data_source, model_source

    model, data = model_source(model), data_source(data)
    names = resolve_methods(bench.methods, bench.ks)
    seeds = list(bench.train_seeds)
    calibration = calibration or Calibration(max_length=train_config.max_length)
    with claim_bench(Path(out), overwrite) as out_dir:  # --overwrite: the old bench back if this one fails
        config = bench_config(model, data, train_config, adapter.rank, adapter.targets, calibration)
        config["full_lr"] = bench.full_lr
        check_resume(out_dir, config)
        majority = _majority(data, train_config.eval_max_examples)
        write_settings(out_dir, settings)  # after the check: a refused resume leaves the bench's record as it was
        if train_config.prefix_cache != "off" and train_config.prefix_cache_dir is None:
            # one disk cache per lowest adapted block, built by the first cell and reused by every other seed/method
            train_config = replace(train_config, prefix_cache_dir=str(out_dir / PREFIX_CACHE_DIR))
        job = _Job(model, data, out_dir, device, show_progress)
        shared = BenchSettings(adapter.rank, adapter.targets, full_lr=bench.full_lr)
        if any(find_method(n)[0].needs_card for n in names):
            card = _ensure_card(job, adapter, calibration)
            shared = replace(shared, card=str(card), num_layers=_num_layers(card))
        # seed-major order: every method's first seed, then every method's second... so that a slow drift of the
        # machine's speed (other work, heat) falls on all methods alike instead of on the later ones
        jobs = [build_cell(n, s, train_config, shared) for s in seeds for n in names]  # flags fail here
        _check_selections(jobs)
        model_params = _model_params(job)
        run_cells(out_dir, jobs, job.train_cell, _say)
        inference = {}
        if bench.inference_examples:
            from layerwise.bench.inference import ensure_inference

            for j in (j for j in jobs if j.train_config.seed == seeds[0]):
                inference[j.method] = ensure_inference(out_dir, j, job.load, train_config, bench.inference_examples,
                                                       bench.inference_repeats, bench.inference_new_tokens, _say)
                _release_memory()
        cells = [collect_cell(cell_dir(out_dir, j.method, j.train_config.seed), j.method, j.train_config.seed)
                 for j in jobs]
        result = {"schema_version": BENCH_SCHEMA,
                  "config": {**config, "methods": names, "seeds": seeds, "ks": list(bench.ks),
                             "inference_examples": bench.inference_examples,
                             "inference_repeats": bench.inference_repeats, "model_params": model_params,
                             "card": shared.card, "baseline": BASELINE, "majority": majority},
                  "cells": cells, "inference": inference, "table": aggregate(cells, model_params, inference)}
        result["files"] = {k: str(v) for k, v in write_bench(out_dir, result).items()}
    return result


class _Job:
    """What every cell of one bench shares: the model and data sources, the folder, the device."""

    def __init__(self, model: ModelSource, data: DataSource, out: Path, device: str | None,
                 show_progress: bool) -> None:
        self.model, self.data, self.out, self.device, self.show_progress = model, data, out, device, show_progress
        self._task: Any = None

    def load(self) -> Any:
        """A fresh base model with its task head (the task's data is read once per bench)."""
        from layerwise.runtime.device import resolve_device
        from layerwise.workflows.prepare import prepare

        ready = prepare(self.model, self.data, resolve_device(self.device), task=self._task)
        self._task = ready.task
        return ready

    def train_cell(self, job: CellJob, cell: Path, resume: bool) -> None:
        """Train one cell with the normal training job (``adapter=None`` is full fine-tuning)."""
        from layerwise.workflows.train import train_job

        train_job(self.model, self.data, cell, train_config=job.train_config, selection=job.selection,
                  adapter=job.adapter, device=self.device, resume=resume, overwrite=True,
                  show_progress=self.show_progress)
        _release_memory()


def _check_selections(jobs: list[CellJob]) -> None:
    """Run every card-based selection once on the card, so a bad option (``--ks`` above the number of layers)
    fails before any training."""
    from layerwise.card.layer_card import LayerCard
    from layerwise.selection.policies import select

    from layerwise.runtime.errors import ConfigError

    cards: dict[str, Any] = {}
    for job in jobs:
        sel = job.selection
        if sel is not None and sel.card is not None:
            if sel.card not in cards:
                cards[sel.card] = LayerCard.load(sel.card)
            try:
                select(cards[sel.card], sel.policy, metric=sel.metric, **sel.options)
            except ConfigError as err:  # the policy names its own option (--k); the bench's flags made it
                raise ConfigError(f"--methods {job.method} (with --ks): {err}") from err


def _num_layers(card_file: Path) -> int:
    """The number of blocks the bench's card measured (rank budgets are sized by it)."""
    from layerwise.card.layer_card import LayerCard

    return LayerCard.load(card_file).num_layers


def _model_params(job: _Job) -> int:
    """Parameters of the model with its task head (what full fine-tuning trains), cached in model.json."""
    from layerwise.runtime.io import atomic_write_json

    path = job.out / MODEL_FILE
    if path.exists():
        return int(json.loads(path.read_text())["parameters"])
    ready = job.load()
    count = sum(p.numel() for p in ready.loaded.model.parameters())
    atomic_write_json(path, {"parameters": count, "fingerprint": ready.loaded.fingerprint})
    return count


def _ensure_card(job: _Job, adapter: AdapterChoice, calibration: Calibration) -> Path:
    """out/card/card.json, made once (calibration seed 0) with the metrics of every card-based method."""
    from layerwise.settings import ProbeSettings
    from layerwise.workflows.card import make_card

    card_file = job.out / CARD_DIR / "card.json"
    if card_file.exists():
        return card_file
    metrics = ",".join(dict.fromkeys(m for method in BENCH_METHODS.values() for m in method.card_metrics))
    _say("Layer Card (calibration seed 0)")
    make_card(job.model, job.data, job.out / CARD_DIR, calibration=replace(calibration, seed=0),
              probe=ProbeSettings(metrics=metrics, rank=adapter.rank, targets=adapter.targets), device=job.device,
              overwrite=True, show_progress=job.show_progress)
    return card_file


def _majority(data: DataSource, max_examples: int | None = None) -> dict[str, Any] | None:
    """The majority-class (or training-mean) baseline on the dev examples the cells score (the
    ``--eval-max-examples`` sample), from the bench's own data split."""
    from layerwise.evaluate.baseline import scored_majority

    return scored_majority(data.load(), max_examples)


def _release_memory() -> None:
    """Free the last cell's model before the next one (GPU peak memory is per cell)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _say(text: str) -> None:
    from layerwise.runtime import distributed

    if distributed.is_main():
        logging.getLogger(__name__).info(text)
