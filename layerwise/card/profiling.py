"""``profile_layers``: one call from a model and calibration batches to a
:class:`~layerwise.card.layer_card.LayerCard`."""

from __future__ import annotations

import datetime as _dt
import logging
import math
from typing import Any, Sequence

import torch

from layerwise.card.layer_card import LayerCard, metric_entry
from layerwise.runtime.errors import ConfigError, LayerwiseError
from layerwise.card.metrics import CROSS_BLOCK, ImportanceMetric, MetricValues, get_metrics
from layerwise.card.probe.plan import plan_statistics
from layerwise.card.stability import bootstrap_stability

logger = logging.getLogger(__name__)

__all__ = ["profile_layers", "plain_model", "NonFiniteMetricError"]


class NonFiniteMetricError(LayerwiseError):
    """A metric came out NaN or infinite at some layer: never ranked silently."""


def profile_layers(
    model: torch.nn.Module,
    batches: Sequence[dict[str, torch.Tensor]],
    metrics: str | Sequence[str] | None = None,
    *,
    name: str | None = None,
    stack: Any = None,
    layers_path: str | None = None,
    data_info: dict[str, Any] | None = None,
    rank: int = 8,
    targets: Sequence[str] = ("q", "v"),
    pooling: str | None = None,
    device: Any = None,
    weightdelta_steps: int = 20,
    n_boot: int = 200,
    seed: int = 0,
    max_stat_memory: int = 2 << 30,
    show_progress: bool = True,
    spectrum_threads: int | None = 1,
    loss_fn: Any = None,
    sketch_dim: int | None = None,
) -> LayerCard:
    """Measure every requested metric of every block of ``model`` in one streaming pass over ``batches``.

    ``metrics`` is a list or comma string of registered names (default: all but ``weightdelta``).
    ``rank`` and ``targets`` set the adapter the ``cost`` metric prices; ``pooling`` (``first``, ``last``,
    ``mean``) the token CKA compares (default: first for encoders, last real token for decoders).

    ``loss_fn(outputs, batch) -> scalar loss`` replaces the model's own loss for the gradient metrics (a model
    without a task head, or a custom objective); the model then gets each batch without ``labels``.

    ``spectrum_threads``: torch threads for the weight metrics' CPU SVDs (None: the process's setting; see
    ``layerwise.card.probe.spectrum.SpectrumCache``).

    ``max_stat_memory`` bounds the bytes of the (d x d)-type statistics (``layerwise.card.probe.plan``): exact when
    they fit, else the residual gradient as a Gaussian projection (of dimension ``sketch_dim``, default the
    largest that fits) with a stated error bound, else the blocks probed in groups over several passes; the
    card's ``probe`` records the plan and each metric's representation and bound. A ``torch.compile``'d model
    is probed through its original module (run eagerly).

    Inside a process group (``torchrun``; see ``layerwise.runtime.distributed``) pass every rank the same
    ``batches``: each probes its share and every rank returns the same card as one process would.
    """
    from layerwise.models.layers import find_layer_stack
    from layerwise.models.loading import model_fingerprint
    from layerwise.card.probe.runner import ProbeResult
    from layerwise.card.probe.stats import ProbeStats

    chosen = get_metrics(metrics)
    model = plain_model(model)
    stack = stack or find_layer_stack(model, layers_path)
    statistics = {s for m in chosen for s in m.statistics}
    grouped: dict[str, MetricValues] = {}
    plan = None
    if statistics:
        plan = plan_statistics(len(stack), _hidden_size(model, stack), statistics, max_stat_memory, sketch_dim,
                               cross_block=any(m.name in CROSS_BLOCK for m in chosen),
                               examples=_examples(batches))
        if plan.passes == 1:
            result, ranks_info = _probe_all_ranks(model, stack, batches, statistics, pooling, device,
                                                  max_stat_memory, show_progress, loss_fn, plan)
        else:
            result, ranks_info, grouped = _probe_in_groups(model, stack, batches, chosen, plan, pooling, device,
                                                           show_progress, loss_fn)
    else:
        ranks_info = {}
        stats = ProbeStats(num_blocks=len(stack), hidden=0, wanted=frozenset())
        result = ProbeResult(stats, stack, pooling or "first", 0.0, 0, 0, False)
    options: dict[str, Any] = {"rank": rank, "targets": tuple(targets)}
    if any(m.needs == "weights" for m in chosen):
        from layerwise.card.probe.spectrum import SpectrumCache

        options["spectra"] = SpectrumCache(spectrum_threads)  # one SVD per module for all weight metrics
    probe_info = {**_probe_info(result), **ranks_info}
    if plan is not None:
        probe_info["stat_plan"] = plan.info()
        probe_info["metric_statistics"] = {m.name: plan.metric_bound(m.name) for m in chosen if m.statistics}
    if any(m.name == "weightdelta" for m in chosen):
        from layerwise.card.probe.weightdelta import weight_delta

        values, seconds = weight_delta(model, stack, batches, weightdelta_steps, rank, targets, seed=seed)
        options.update(weightdelta_values=values, weightdelta_steps=weightdelta_steps)
        probe_info["weightdelta_seconds"] = seconds
    notes: list[str] = []
    entries = {m.name: _entry(m, result, options, stack, n_boot, seed, notes, grouped.get(m.name), plan)
               for m in chosen}
    _warn_few_batches(entries)
    if "spectra" in options:  # the weight metrics' SVDs, run once per module (layerwise.card.probe.spectrum)
        probe_info["weights_seconds"] = options["spectra"].seconds
        probe_info["weights_modules"] = len(options["spectra"])
    fingerprint = model_fingerprint(model, name or getattr(model.config, "_name_or_path", "") or type(model).__name__)
    return LayerCard(
        model=fingerprint,
        data={**(data_info or {}), "pooling": result.pooling, "seed": (data_info or {}).get("seed", seed)},
        layers=_layers_info(stack),
        metrics=entries,
        probe=probe_info,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        notes=notes,
    )


def _probe_all_ranks(model: torch.nn.Module, stack: Any, batches: Sequence[dict], statistics: set[str],
                     pooling: str | None, device: Any, max_stat_memory: int, show_progress: bool,
                     loss_fn: Any = None, plan: Any = None) -> tuple[Any, dict]:
    """The probe pass; in a data-parallel run each rank probes batches i % world == rank and the statistics
    are reduced over ranks (``layerwise.card.probe.reduce``), so every rank holds the single-process card."""
    from layerwise.runtime import distributed
    from layerwise.card.probe.reduce import reduce_result_
    from layerwise.card.probe.runner import run_probe

    world = distributed.world_size()
    if 1 < world and len(batches) < world:
        raise ConfigError(f"{len(batches)} calibration batch(es) for {world} processes: every process needs at "
                          "least one; raise --samples or lower --batch-size")
    result = run_probe(model, stack, distributed.shard(batches), statistics, pooling, device, max_stat_memory,
                       show_progress and distributed.is_main(), loss_fn, plan)
    return result, reduce_result_(result)


def plain_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under peft and ``torch.compile`` wrappers (the probe's hooks run it eagerly)."""
    from layerwise.models.layers import unwrap_model
    from layerwise.card.probe.runner import is_compiled, uncompiled

    for _ in range(4):
        if is_compiled(model):
            logger.info("the model is torch.compile'd: the card probes its original module, run eagerly")
        inner = unwrap_model(uncompiled(model))
        if inner is model:
            break
        model = inner
    return model


def _examples(batches: Sequence[dict]) -> int | None:
    """Calibration examples of this process's probe (None in a process group: pooled rows are not all-reduced)."""
    from layerwise.runtime import distributed

    if distributed.world_size() > 1:
        return None
    return sum(int(b["input_ids"].shape[0]) for b in batches if "input_ids" in b) or None


def _hidden_size(model: torch.nn.Module, stack: Any) -> int:
    from layerwise.card.probe.runner import _hidden_size as hidden_size

    return hidden_size(model, stack)


def _probe_in_groups(model: torch.nn.Module, stack: Any, batches: Sequence[dict], chosen: list[ImportanceMetric],
                     plan: Any, pooling: str | None, device: Any, show_progress: bool,
                     loss_fn: Any) -> tuple[Any, dict, dict[str, MetricValues]]:
    """One pass over ``batches`` per group of blocks in ``plan``; each group's metric values are computed right
    after its pass (its statistics then freed) and joined block by block."""
    import dataclasses

    from layerwise.card.probe.runner import ProbeResult
    from layerwise.card.probe.stats import ProbeStats

    data = [m for m in chosen if m.statistics]  # the metrics read from this pass's statistics
    statistics = {s for m in data for s in m.statistics}
    parts: dict[str, list[MetricValues]] = {m.name: [] for m in data}
    seconds, peak, first, ranks_info = 0.0, 0, None, {}
    for group in plan.groups:
        blocks = [dataclasses.replace(stack.blocks[i], index=j) for j, i in enumerate(group)]
        sub = dataclasses.replace(stack, blocks=blocks)
        logger.info("probing blocks %d-%d (pass %d of %d, --max-stat-memory)", group[0], group[-1],
                    plan.groups.index(group) + 1, plan.passes)
        part = dataclasses.replace(plan, num_blocks=len(group), groups=[list(range(len(group)))])
        result, ranks_info = _probe_all_ranks(model, sub, batches, statistics, pooling, device, plan.budget,
                                              show_progress, loss_fn, part)
        result.block_offset = group[0]
        for m in data:  # a cross-block metric keeps its per-block pieces (float32) until the last pass
            keep = CROSS_BLOCK[m.name][0](result).float() if m.name in CROSS_BLOCK else m.compute(result, {})
            parts[m.name].append(keep)
        seconds, peak = seconds + result.seconds, max(peak, result.peak_memory)
        first = first or result
        del result
    assert first is not None
    s = first.stats
    stats = ProbeStats(num_blocks=len(stack), hidden=s.hidden, wanted=frozenset())
    stats.batches, stats.tokens, stats.examples = s.batches, s.tokens, s.examples
    whole = ProbeResult(stats, stack, first.pooling, seconds, peak, first.start_memory, first.backward, plan=plan)
    joined = {name: CROSS_BLOCK[name][1](values) if name in CROSS_BLOCK else _join(values)
              for name, values in parts.items()}
    return whole, ranks_info, joined


def _join(parts: list[MetricValues]) -> MetricValues:
    """Per-group metric values joined block by block (per-batch columns side by side, per-block extras
    concatenated, undefined blocks renumbered)."""
    import numpy as np

    values, undefined, notes, offset = [], {}, [], 0
    for p in parts:
        values += p.values
        undefined.update({offset + i: msg for i, msg in p.undefined.items()})
        notes += p.notes
        offset += len(p.values)
    per_batch = None if any(p.per_batch is None for p in parts) else np.hstack([p.per_batch for p in parts])
    extras = {}
    for key, v in parts[0].extras.items():
        per_block = all(isinstance(p.extras.get(key), list) and len(p.extras[key]) == len(p.values) for p in parts)
        extras[key] = [x for p in parts for x in p.extras[key]] if per_block else v
    return MetricValues(values, per_batch, extras, undefined, notes)


def _warn_few_batches(entries: dict) -> None:
    """One warning when a measured metric's stability is undefined for too few calibration batches."""
    from layerwise.card.stability import MIN_STABILITY_BATCHES

    few = sorted({s["n_batches"] for e in entries.values() if (s := e.get("stability"))
                  and s.get("kendall_tau_mean") is None and "n_batches" in s})
    if few:
        import warnings

        warnings.warn(f"the card's ranking stability is undefined: {few[0]} calibration batch"
                      f"{'es' if few[0] != 1 else ''} (the bootstrap needs at least {MIN_STABILITY_BATCHES}; raise "
                      "--samples or lower --batch-size)", UserWarning, stacklevel=3)


def _entry(metric: ImportanceMetric, result: Any, options: dict, stack: Any, n_boot: int, seed: int,
           notes: list[str], computed: MetricValues | None = None, plan: Any = None) -> dict:
    mv: MetricValues = computed if computed is not None else metric.compute(result, options)
    if plan is not None and metric.statistics and (not plan.exact or plan.passes > 1):
        mv.extras.update(plan.metric_bound(metric.name), passes=plan.passes)
    _check_finite(metric.name, mv.values, stack, mv.undefined)
    notes.extend(mv.notes + list(mv.undefined.values()))
    if mv.per_batch is not None:
        stability = bootstrap_stability(mv.per_batch, metric.higher_is_better, n_boot=n_boot, seed=seed)
        stability["basis"] = "per-batch values" if metric.name in _EXACT_PER_BATCH else "per-batch estimates"
    elif metric.needs in ("static", "weights"):
        stability = {"deterministic": True}
    else:
        stability = None
    return metric_entry(mv.values, metric.info(), stability, _jsonable(mv.extras))


_EXACT_PER_BATCH = {"actnorm", "gradnorm", "fisher", "taylor"}


def _check_finite(name: str, values: Sequence[float | None], stack: Any, undefined: dict[int, str]) -> None:
    """Refuse a NaN or infinite value, and a None the metric did not explain in ``undefined``."""
    for i, v in enumerate(values):
        if i in undefined and v is None:
            continue
        if v is None or not math.isfinite(v):
            raise NonFiniteMetricError(
                f"metric {name!r} is {v} at layer {i} ({stack.blocks[i].name}); the probe statistics are not "
                "finite (overflow in half precision, or degenerate inputs): no ranking was made")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    return x


def _layers_info(stack: Any) -> list[dict[str, Any]]:
    return [{"index": b.index, "name": b.name, "params": sum(p.numel() for p in b.module.parameters()),
             "linears": [{"name": lin.name, "role": lin.role, "in": lin.in_features, "out": lin.out_features,
                          **({"conv1d": True} if lin.conv1d else {})}  # GPT-2's Conv1D: peft's fan_in_fan_out
                         for lin in b.linears]} for b in stack.blocks]


def _probe_info(result: Any) -> dict[str, Any]:
    s = result.stats
    return {"seconds": result.seconds, "peak_memory": result.peak_memory, "start_memory": result.start_memory,
            "batches": s.batches, "examples": s.examples, "tokens": s.tokens, "backward": result.backward,
            "device": str(next(iter(result.stack.blocks[0].module.parameters())).device),
            "model_dtype": _model_dtype(result.stack)}


def _model_dtype(stack: Any) -> str:
    """The dtype the blocks computed in (their first floating-point weight's); statistics are float32/64."""
    for p in stack.blocks[0].module.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return "quantized"
