"""The ``layerwise bench`` job: every method on the same data, steps and seeds, as one table in the manner of
Act-LoRA's Tables 4-6 (score, trainable parameters, time per phase, peak memory, each against uniform LoRA),
with the inference cost of each adapter unmerged and merged (La-LoRA's Table 13) and a sweep over k of the
top-k methods (Act-LoRA's Table 7).

A bench method is one decorated function that says what a cell trains: a layer selection and a peft adapter
(``None, None`` is full fine-tuning). Layout of ``out``::

    bench_config.json      what the cells were trained with (a resumed bench must match it)
    model.json             parameter count of the model with its task head
    card/                  the Layer Card (calibration seed 0) shared by every card-based method
    cells/<method>/seed<s>/  one training run (``layerwise train`` outputs; ``metrics.json`` when finished)
    cells/<method>/inference.json  inference cost of the method's adapter (its first seed's weights)
    bench.json, bench.md, bench_*.png

Finished cells are not trained again; a cell with a checkpoint resumes from it.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from layerwise.errors import ConfigError

__all__ = ["BenchSettings", "BenchMethod", "CellJob", "BENCH_METHODS", "BENCH_SCHEMA", "BASELINE",
           "register_bench_method", "find_method", "resolve_methods", "build_cell", "summarize", "aggregate",
           "relative_to", "collect_cell", "run_bench", "CARD_DIR", "CELLS_DIR"]

BENCH_SCHEMA = 1
"""Version of ``bench.json``."""
BASELINE = "lora"
"""The method every other one is compared with (uniform LoRA over all layers)."""
CARD_DIR, CELLS_DIR = "card", "cells"
_CONFIG_FILE, _MODEL_FILE, _INFERENCE_FILE, _CELL_FILE = ("bench_config.json", "model.json", "inference.json",
                                                          "bench_cell.json")
_K = "{k}"
"""Placeholder of a method parametrised by ``--k`` (``actnorm-top{k}`` is ``actnorm-top1``, ``actnorm-top2``...)."""


@dataclass(frozen=True)
class BenchSettings:
    """What every method of one bench shares besides the training config."""

    rank: int = 8
    """Adapter rank (``--rank``); La-LoRA's r_max."""
    targets: str = "q,v"
    """Projections adapted (``--targets``)."""
    card: str | None = None
    """The shared ``card.json``; card-based methods need it."""
    full_lr: float | None = None
    """Peak learning rate of full fine-tuning (``--full-lr``); ``None``: the bench's ``--lr``."""


@dataclass(frozen=True)
class BenchMethod:
    """A registered bench method: ``fn(settings, k) -> (SelectionChoice | None, AdapterChoice | None)``."""

    name: str
    fn: Callable[[BenchSettings, int | None], tuple[Any, Any]]
    description: str
    card_metrics: tuple[str, ...] = ()
    """Card metrics the method ranks by; empty for methods that need no card."""

    @property
    def needs_card(self) -> bool:
        """True when the method selects layers from the Layer Card."""
        return bool(self.card_metrics)

    @property
    def takes_k(self) -> bool:
        """True for a method parametrised by ``--k`` (its name holds ``{k}``)."""
        return _K in self.name


@dataclass(frozen=True)
class CellJob:
    """What one (method, seed) cell trains; ``selection``/``adapter`` None is full fine-tuning."""

    method: str
    selection: Any
    adapter: Any
    train_config: Any

    @property
    def full(self) -> bool:
        """Full fine-tuning: every parameter trained, no adapter."""
        return self.adapter is None


BENCH_METHODS: dict[str, BenchMethod] = {}


def register_bench_method(name: str, description: str, card_metrics: Sequence[str] = ()) -> Callable:
    """Decorator adding ``fn(settings, k) -> (selection, adapter)`` to :data:`BENCH_METHODS`."""

    def wrap(fn: Callable[[BenchSettings, int | None], tuple[Any, Any]]) -> Callable:
        BENCH_METHODS[name] = BenchMethod(name, fn, description, tuple(card_metrics))
        return fn

    return wrap


# -- the methods --------------------------------------------------------------------------------------
def _uniform(method: str, s: BenchSettings) -> tuple[Any, Any]:
    from layerwise.workflows.train import AdapterChoice, SelectionChoice

    return SelectionChoice("all"), AdapterChoice(method, s.targets, s.rank)


def _from_card(s: BenchSettings, policy: str, options: dict[str, Any], metric: str | None = None) -> Any:
    from layerwise.workflows.train import SelectionChoice

    if s.card is None:
        raise ConfigError(f"policy {policy!r} of this bench method needs the bench's Layer Card (card.json)")
    return SelectionChoice(policy, metric, options, s.card)


@register_bench_method("full", "full fine-tuning: every parameter trained, no adapter")
def _full(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    return None, None


_UNIFORM_METHODS = {
    "lora": "LoRA on every layer (uniform LoRA, the baseline)",
    "adalora": "AdaLoRA on every layer (SVD-form LoRA, init rank --rank)",
    "ia3": "IA3 on every layer (learned scaling vectors)",
    "vera": "VeRA on every layer (shared random projections, trained scalings)",
    "loha": "LoHa on every layer (Hadamard product of low-rank updates)",
    "lokr": "LoKr on every layer (Kronecker product with a low-rank factor)",
    "dora": "DoRA on every layer (LoRA direction plus learned magnitude)",
}
"""peft methods benched on every layer, in table order (the bench method's name is the peft method's)."""
for _method, _description in _UNIFORM_METHODS.items():
    register_bench_method(_method, _description)(
        lambda s, k, method=_method: _uniform(method, s))
del _method, _description


@register_bench_method("actnorm-top{k}", "LoRA on the top-k layers by activation norm (Act-LoRA; k from --k)",
                       card_metrics=("actnorm",))
def _actnorm_top(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    from layerwise.workflows.train import AdapterChoice

    if k is None:
        raise ConfigError("actnorm-top{k} needs k: name it actnorm-top2 or give --k")
    return _from_card(s, "top-k", {"k": k}, "actnorm"), AdapterChoice("lora", s.targets, s.rank)


@register_bench_method("cka", "LoRA on the half of the layers ranked first by CKA (ratio 0.5)", card_metrics=("cka",))
def _cka(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    from layerwise.workflows.train import AdapterChoice

    return _from_card(s, "ratio", {"ratio": 0.5}, "cka"), AdapterChoice("lora", s.targets, s.rank)


@register_bench_method("pareto", "LoRA on the Layer Card's balanced point of the importance/FLOPs front",
                       card_metrics=("resnorm", "cost"))
def _pareto(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    from layerwise.workflows.train import AdapterChoice

    return _from_card(s, "pareto", {"objective": "balanced"}), AdapterChoice("lora", s.targets, s.rank)


@register_bench_method("lalora", "La-LoRA on every layer (ranks adapt per block during training)")
def _lalora(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    from layerwise.workflows.train import SelectionChoice

    return SelectionChoice("all"), _lalora_adapter(s)


@register_bench_method("lalora-selected", "La-LoRA on the Layer Card's pareto-selected layers",
                       card_metrics=("resnorm", "cost"))
def _lalora_selected(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    return _from_card(s, "pareto", {"objective": "balanced"}), _lalora_adapter(s)


def _lalora_adapter(s: BenchSettings) -> Any:
    """``--ranks adaptive`` at r_max = ``--rank``; a clear error where layerwise.adaptive is not there."""
    from layerwise.workflows import train as train_workflow

    if not hasattr(train_workflow, "ADAPTIVE") or not hasattr(train_workflow, "check_adaptive"):
        raise ConfigError("--methods lalora needs layerwise.adaptive (La-LoRA), which this install lacks")
    adapter = train_workflow.AdapterChoice("lora", s.targets, s.rank, ranks=train_workflow.ADAPTIVE, r_max=s.rank)
    train_workflow.check_adaptive(adapter)
    return adapter


# -- method names ---------------------------------------------------------------------------------------
def find_method(name: str) -> tuple[BenchMethod, int | None]:
    """The registered method of a concrete name and its k (``actnorm-top3`` -> (actnorm-top{k}, 3))."""
    method = BENCH_METHODS.get(name)
    if method is not None and not method.takes_k:
        return method, None
    for method in BENCH_METHODS.values():
        if method.takes_k:
            head, tail = method.name.split(_K)
            middle = name[len(head): len(name) - len(tail)] if len(name) > len(head) + len(tail) else ""
            if name.startswith(head) and name.endswith(tail) and middle.isdigit():
                return method, int(middle)
    raise ConfigError(f"--methods: unknown method {name!r}; registered: {', '.join(BENCH_METHODS)} "
                      f"(see --list-methods)")


def resolve_methods(spec: str | Sequence[str], ks: Sequence[int] = (1, 2, 3)) -> list[str]:
    """Concrete method names of ``--methods`` (a comma list or ``all``): a ``{k}`` method (or its name without
    ``{k}``, e.g. ``actnorm-top``) becomes one method per ``--k``; duplicates are dropped, order kept."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if names == ["all"]:
        names = list(BENCH_METHODS)
    if not names:
        raise ConfigError(f"--methods is empty; give a comma list or 'all' of: {', '.join(BENCH_METHODS)}")
    templates = {m.name: m for m in BENCH_METHODS.values() if m.takes_k}
    templates.update({m.name.replace(_K, ""): m for m in list(templates.values())})
    out: list[str] = []
    for name in names:
        if name in templates:
            if not ks:
                raise ConfigError(f"--methods {name} needs --k (e.g. --k 1,2,3)")
            out += [templates[name].name.replace(_K, str(k)) for k in ks]
        else:
            find_method(name)
            out.append(name)
    return list(dict.fromkeys(out))


def build_cell(name: str, seed: int, train_config: Any, settings: BenchSettings) -> CellJob:
    """The job of cell (``name``, ``seed``): the method's selection and adapter, ``train_config`` at ``seed``."""
    method, k = find_method(name)
    selection, adapter = method.fn(settings, k)
    job = CellJob(name, selection, adapter, replace(train_config, seed=int(seed)))
    if job.full and settings.full_lr is not None:
        job = replace(job, train_config=replace(job.train_config, lr=settings.full_lr))
    return job


# -- aggregation (pure) ---------------------------------------------------------------------------------
def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of the values that are not None."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def _method_row(method: str, cells: Sequence[dict[str, Any]], model_params: int | None) -> dict[str, Any]:
    from layerwise.report import PHASES

    names = list(dict.fromkeys(k for c in cells for k in (c.get("metrics") or {})))
    mean_params = summarize([c["trainable_params"] for c in cells])["mean"]
    params = None if mean_params is None else int(round(mean_params))  # the same for every seed
    return {
        "method": method, "seeds": [c["seed"] for c in cells], "main_metric": cells[0]["main_metric"],
        "layers": cells[0].get("layers"), "score": summarize([c["score"] for c in cells]),
        "metrics": {n: summarize([(c.get("metrics") or {}).get(n) for c in cells]) for n in names},
        "trainable_params": params,
        "params_share": params / model_params if params is not None and model_params else None,
        "train_seconds": summarize([c["train_seconds"] for c in cells]),
        "phase_seconds": {p: summarize([c["phase_seconds"][p] for c in cells]) for p in PHASES},
        "peak_memory": summarize([c["peak_memory"] for c in cells]),
        "memory_kind": cells[0].get("memory_kind"), "steps": cells[0].get("steps"),
    }


def aggregate(cells: Sequence[dict[str, Any]], model_params: int | None = None,
              inference: dict[str, dict[str, Any]] | None = None, baseline: str = BASELINE) -> list[dict[str, Any]]:
    """One row per method (in the order of ``cells``): mean/std over seeds of every figure, the parameter share
    of the model, the method's inference figures, and ``vs_baseline`` (:func:`relative_to`)."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        by_method.setdefault(cell["method"], []).append(cell)
    rows = [_method_row(m, sorted(cs, key=lambda c: c["seed"]), model_params) for m, cs in by_method.items()]
    for row in rows:
        row["inference"] = (inference or {}).get(row["method"])
    base = next((r for r in rows if r["method"] == baseline), None)
    return [{**r, "vs_baseline": relative_to(r, base) if base is not None else None} for r in rows]


def _pct_of(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else 100.0 * a / b


def relative_to(row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``row`` against the baseline row: score change in % of the baseline's score, and time, each phase,
    peak memory and trainable parameters as % of the baseline's (100 = the same)."""
    s, b = row["score"]["mean"], base["score"]["mean"]
    change = None if s is None or b in (None, 0) else 100.0 * (s - b) / abs(b)
    return {"score_change_pct": change,
            "time_pct": _pct_of(row["train_seconds"]["mean"], base["train_seconds"]["mean"]),
            "phase_pct": {p: _pct_of(v["mean"], base["phase_seconds"][p]["mean"])
                          for p, v in row["phase_seconds"].items()},
            "memory_pct": _pct_of(row["peak_memory"]["mean"], base["peak_memory"]["mean"]),
            "params_pct": _pct_of(row["trainable_params"], base["trainable_params"])}


def collect_cell(cell_dir: str | os.PathLike, method: str, seed: int) -> dict[str, Any]:
    """One finished cell's raw figures (``layerwise.report.collect_run``) with its method, seed and wall time."""
    from layerwise.report import collect_run

    d = Path(cell_dir)
    raw = collect_run(d, method)
    extra = json.loads((d / _CELL_FILE).read_text()) if (d / _CELL_FILE).exists() else {}
    return {**raw, "method": method, "seed": int(seed), "wall_seconds": extra.get("wall_seconds")}


# -- the job ------------------------------------------------------------------------------------------------
@dataclass
class _Bench:
    """Everything one bench run works with (internal)."""

    model: str
    task: str
    data: str | None
    out: Path
    train_config: Any
    settings: BenchSettings
    common: dict[str, Any]
    """columns, regression, cache_dir, trust_remote_code, layers_path, device: passed to every job."""
    show_progress: bool
    task_data: Any = None


def run_bench(model: str, task: str, data: str | None, out: str | os.PathLike, *, methods: str | Sequence[str],
              seeds: Sequence[int], train_config: Any, ks: Sequence[int] = (1, 2, 3), rank: int = 8,
              targets: str = "q,v", calibration: Any = None, inference_examples: int = 64, inference_repeats: int = 3,
              inference_new_tokens: int = 16, columns: dict[str, str | None] | None = None, regression: bool = False,
              cache_dir: str | None = None, trust_remote_code: bool = False, layers_path: str | None = None,
              device: str | None = None, overwrite: bool = False, show_progress: bool = True,
              full_lr: float | None = None) -> dict[str, Any]:
    """Train every (method, seed) cell into ``out`` (resuming an existing ``out``), measure each method's
    inference cost, and write bench.json, bench.md and bench_*.png. Returns the bench.json content.

    ``full_lr`` is full fine-tuning's peak learning rate (adapters usually want a larger one than full
    fine-tuning); ``None`` uses ``train_config.lr`` for every cell."""
    from layerwise.bench_render import write_bench
    from layerwise.workflows.card import CalibrationSpec

    from layerwise.layers import parse_targets

    if any(int(k) < 1 for k in ks):
        raise ConfigError(f"--k values must be >= 1 (layers adapted), got {list(ks)}")
    if rank < 1:
        raise ConfigError(f"--rank must be >= 1, got {rank}")
    if full_lr is not None and not full_lr > 0:
        raise ConfigError(f"--full-lr must be > 0, got {full_lr}")
    parse_targets(targets)  # a bad --targets fails before anything is loaded
    names, seeds = resolve_methods(methods, ks), _check_seeds(seeds)
    if inference_examples < 0:
        raise ConfigError(f"--inference-examples must be >= 0 (0 skips the measurement), got {inference_examples}")
    calibration = calibration or CalibrationSpec(max_length=train_config.max_length)
    out_dir = _prepare_out(Path(out), overwrite)
    config = _bench_config(model, task, data, train_config, rank, targets, calibration, columns, regression)
    if full_lr is not None:  # recorded only when set: benches made before the flag resume unchanged
        config["full_lr"] = full_lr
    _check_resume(out_dir, config)
    common = dict(columns=columns, regression=regression, cache_dir=cache_dir, trust_remote_code=trust_remote_code,
                  layers_path=layers_path, device=device)
    settings = BenchSettings(rank, targets, full_lr=full_lr)
    bench = _Bench(model, task, data, out_dir, train_config, settings, common, show_progress)
    if any(find_method(n)[0].needs_card for n in names):
        bench.settings = replace(bench.settings, card=str(_ensure_card(bench, calibration)))
    # seed-major order: every method's first seed, then every method's second... so that a slow drift of the
    # machine's speed (other work, heat) falls on all methods alike instead of on the later ones
    jobs = [build_cell(n, s, train_config, bench.settings) for s in seeds for n in names]  # flags fail here
    _check_selections(jobs)
    model_params = _model_params(bench)
    _run_cells(bench, jobs)
    firsts = [j for j in jobs if j.train_config.seed == seeds[0]]
    inference = {j.method: _ensure_inference(bench, j, inference_examples, inference_repeats, inference_new_tokens)
                 for j in firsts} if inference_examples else {}
    cells = [collect_cell(_cell_dir(out_dir, j.method, j.train_config.seed), j.method, j.train_config.seed)
             for j in jobs]
    result = {"schema_version": BENCH_SCHEMA,
              "config": {**config, "methods": names, "seeds": list(seeds), "ks": list(ks),
                         "inference_examples": inference_examples, "inference_repeats": inference_repeats,
                         "model_params": model_params, "card": bench.settings.card, "baseline": BASELINE},
              "cells": cells, "inference": inference,
              "table": aggregate(cells, model_params, inference)}
    result["files"] = {k: str(v) for k, v in write_bench(out_dir, result).items()}
    return result


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds must be distinct non-negative integers (at least one), got {seeds}")
    return seeds


def _check_selections(jobs: Sequence[CellJob]) -> None:
    """Run every card-based selection once on the card, so a bad option (``--k`` above the number of layers)
    fails before any training."""
    from layerwise.card import LayerCard
    from layerwise.selection import select

    cards: dict[str, Any] = {}
    for job in jobs:
        sel = job.selection
        if sel is not None and sel.card is not None:
            if sel.card not in cards:
                cards[sel.card] = LayerCard.load(sel.card)
            select(cards[sel.card], sel.policy, metric=sel.metric, **sel.options)


def _cell_dir(out: Path, method: str, seed: int) -> Path:
    return out / CELLS_DIR / method / f"seed{seed}"


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """An existing bench folder is resumed; ``overwrite`` deletes the bench's own outputs there first."""
    from layerwise.io import prepare_output_dir

    if out.is_dir() and overwrite:
        for name in (CELLS_DIR, CARD_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        for path in [out / _CONFIG_FILE, out / _MODEL_FILE, *out.glob("bench*.json"), *out.glob("bench*.md"),
                     *out.glob("bench*.png")]:
            path.unlink(missing_ok=True)
    if not overwrite and out.is_dir() and any(out.iterdir()) and not (out / _CONFIG_FILE).exists():
        raise ConfigError(f"--out {out} exists, is not empty and holds no bench ({_CONFIG_FILE}); choose another "
                          "--out or pass --overwrite")
    return prepare_output_dir(out, overwrite=True)


def _bench_config(model: str, task: str, data: str | None, train_config: Any, rank: int, targets: str,
                  calibration: Any, columns: Any, regression: bool) -> dict[str, Any]:
    """What shapes every cell's result: a resumed bench must use the same values (seeds/methods may change)."""
    train = {k: v for k, v in train_config.to_dict().items() if k != "seed"}
    if data is not None and Path(data).exists():
        data = str(Path(data).resolve())  # the same folder however it was written
    return {"model": model, "task": task, "data": data, "train_config": train, "rank": rank, "targets": targets,
            "calibration": {"samples": calibration.samples, "seed": calibration.seed,
                            "batch_size": calibration.batch_size, "max_length": calibration.max_length},
            "columns": columns or {}, "regression": regression}


def _check_resume(out: Path, config: dict[str, Any]) -> None:
    """Refuse to resume a bench trained with other values; record the config of a new one."""
    from layerwise.io import atomic_write_json
    from layerwise.train.config import flag_name

    path = out / _CONFIG_FILE
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
    """``{"train_config.<field>": default}`` for the TrainConfig fields that have one."""
    from dataclasses import MISSING, fields

    from layerwise.train import TrainConfig

    return {f"train_config.{f.name}": f.default for f in fields(TrainConfig) if f.default is not MISSING}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "columns":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _load_task_data(bench: _Bench) -> Any:
    """The task's data, loaded once per bench for the model count and the inference measurement."""
    from layerwise.inspection import load_task_from_flags

    if bench.task_data is None:
        bench.task_data = load_task_from_flags(bench.task, bench.data, bench.common["columns"],
                                               bench.common["regression"])
    return bench.task_data


def _model_params(bench: _Bench) -> int:
    """Parameters of the model with its task head (what full fine-tuning trains), cached in model.json."""
    from layerwise.inspection import load_model_for_task
    from layerwise.io import atomic_write_json

    path = bench.out / _MODEL_FILE
    if path.exists():
        return int(json.loads(path.read_text())["parameters"])
    loaded = load_model_for_task(bench.model, _load_task_data(bench).task, bench.common["cache_dir"],
                                 bench.common["trust_remote_code"])
    count = sum(p.numel() for p in loaded.model.parameters())
    atomic_write_json(path, {"parameters": count, "fingerprint": loaded.fingerprint})
    return count


def _ensure_card(bench: _Bench, calibration: Any) -> Path:
    """out/card/card.json, made once (calibration seed 0) with the metrics of every card-based method."""
    from layerwise.workflows.card import make_card

    card_file = bench.out / CARD_DIR / "card.json"
    if card_file.exists():
        return card_file
    metrics = list(dict.fromkeys(m for method in BENCH_METHODS.values() for m in method.card_metrics))
    _say("Layer Card (calibration seed 0)")
    make_card(bench.model, bench.task, bench.data, bench.out / CARD_DIR, calibration=replace(calibration, seed=0),
              metrics=metrics, rank=bench.settings.rank, targets=bench.settings.targets, overwrite=True,
              show_progress=bench.show_progress, **bench.common)
    return card_file


def _run_cells(bench: _Bench, jobs: Sequence[CellJob]) -> None:
    """Train every unfinished cell, with a line per cell: its place, cells done and the time left."""
    todo = [j for j in jobs if not (_cell_dir(bench.out, j.method, j.train_config.seed) / "metrics.json").exists()]
    durations = [_recorded_seconds(bench.out, j) for j in jobs if j not in todo]
    durations = [d for d in durations if d is not None]
    done = len(jobs) - len(todo)
    for job in todo:
        left = f", about {_duration(statistics.fmean(durations) * (len(jobs) - done))} left" if durations else ""
        _say(f"[{done + 1}/{len(jobs)}] {job.method} seed {job.train_config.seed} ({done} done{left})")
        start = time.perf_counter()
        _run_cell(bench, job)
        durations.append(time.perf_counter() - start)
        done += 1
        _release_memory()
    _say(f"{len(jobs)}/{len(jobs)} cells done")


def _recorded_seconds(out: Path, job: CellJob) -> float | None:
    path = _cell_dir(out, job.method, job.train_config.seed) / _CELL_FILE
    return json.loads(path.read_text()).get("wall_seconds") if path.exists() else None


def _run_cell(bench: _Bench, job: CellJob) -> None:
    """Train one cell (resuming from its checkpoint if it has one) and record its wall time."""
    from layerwise.io import atomic_write_json
    from layerwise.train.checkpoint import find_checkpoint
    from layerwise.workflows.train import train_job

    cell = _cell_dir(bench.out, job.method, job.train_config.seed)
    resume = find_checkpoint(cell) is not None
    start = time.perf_counter()
    if job.full:
        _train_full(bench, cell, job.train_config, resume)
    else:
        train_job(bench.model, bench.task, bench.data, cell, train_config=job.train_config, selection=job.selection,
                  adapter=job.adapter, resume=resume, overwrite=True, show_progress=bench.show_progress,
                  **bench.common)
    atomic_write_json(cell / _CELL_FILE, {"method": job.method, "seed": job.train_config.seed, "resumed": resume,
                                          "wall_seconds": time.perf_counter() - start})


class _FullWeights:
    """Train-loop callback for full fine-tuning: the weights folder is ``model.safetensors`` of the whole model
    (safetensors, written atomically) instead of a peft adapter."""

    def save_adapter(self, model: Any, path: str | os.PathLike) -> Path:
        from safetensors.torch import save_model

        from layerwise.train.checkpoint import replace_dir

        return replace_dir(path, lambda tmp: save_model(model, str(tmp / "model.safetensors")))


def _train_full(bench: _Bench, cell: Path, train_config: Any, resume: bool) -> None:
    """Full fine-tuning in the same loop: every parameter of the model with its task head requires grad."""
    import torch

    from layerwise.inspection import load_model_for_task, load_task_from_flags
    from layerwise.io import atomic_write_json, prepare_output_dir
    from layerwise.layers import find_layer_stack
    from layerwise.train import train
    from layerwise.workflows.card import resolve_device

    c = bench.common
    dev = resolve_device(c["device"])
    if not resume:
        prepare_output_dir(cell, overwrite=True)
    task_data = load_task_from_flags(bench.task, bench.data, c["columns"], c["regression"])
    loaded = load_model_for_task(bench.model, task_data.task, c["cache_dir"], c["trust_remote_code"])
    model = loaded.model.to(dev)
    for p in model.parameters():
        p.requires_grad_(True)
    layers = list(range(len(find_layer_stack(model, c["layers_path"]))))
    atomic_write_json(cell / "selection.json", {
        "schema_version": 1, "model": loaded.fingerprint, "adapter": None,
        "selection": {"layers": layers, "policy": "full", "metric": None, "params": {}, "ranks": None, "cost": None}})
    torch.manual_seed(train_config.seed)
    train(model, loaded.tokenizer, task_data.task, task_data.train, task_data.dev, train_config, cell, resume=resume,
          callbacks=[_FullWeights()], show_progress=bench.show_progress)


def _ensure_inference(bench: _Bench, job: CellJob, examples: int, repeats: int, new_tokens: int) -> dict[str, Any]:
    """The method's inference cost (unmerged and merged), measured once on the weights of cell ``job``."""
    from layerwise.io import atomic_write_json

    method, seed = job.method, job.train_config.seed
    path = bench.out / CELLS_DIR / method / _INFERENCE_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("examples_asked") == examples and saved.get("repeats") == repeats:
            return saved
    _say(f"inference: {method} (seed {seed} weights, {examples} examples, unmerged and merged)")
    result = {"seed": seed, "examples_asked": examples, "repeats": repeats,
              **_measure_cell(bench, _cell_dir(bench.out, method, seed), job.full, examples, repeats, new_tokens)}
    atomic_write_json(path, result)
    _release_memory()
    return result


def _measure_cell(bench: _Bench, cell: Path, full: bool, examples: int, repeats: int,
                  new_tokens: int) -> dict[str, Any]:
    """Load the base model with the cell's trained weights and time it (:func:`measure_adapter_inference`)."""
    from layerwise.inference import measure_adapter_inference
    from layerwise.inspection import load_model_for_task
    from layerwise.workflows.card import resolve_device

    c, cfg = bench.common, bench.train_config
    task_data = _load_task_data(bench)
    loaded = load_model_for_task(bench.model, task_data.task, c["cache_dir"], c["trust_remote_code"])
    model = loaded.model.to(resolve_device(c["device"]))
    if full:
        from safetensors.torch import load_model

        load_model(model, str(cell / "adapter" / "model.safetensors"), device=str(next(model.parameters()).device))
    else:
        from peft import PeftModel

        from layerwise.quiet import peft_wrapping

        with peft_wrapping():
            model = PeftModel.from_pretrained(model, str(cell / "adapter"))
    sample = (task_data.dev or task_data.train)[:examples]
    return measure_adapter_inference(model, loaded.tokenizer, task_data.task, sample, cfg.batch_size, repeats,
                                     max_length=cfg.max_length, new_tokens=new_tokens)


def _release_memory() -> None:
    """Free the last cell's model before the next one (GPU peak memory is per cell)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _duration(seconds: float) -> str:
    """``1m05s``, or ``2h03m`` from an hour on."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _say(text: str) -> None:
    from layerwise import distributed

    if distributed.is_main():
        logging.getLogger(__name__).info(text)
