"""The ``layerwise train`` job: choose layers (from a card or by hand), put a peft adapter there, train it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Mapping

from layerwise.runtime.errors import ConfigError
from layerwise.train.job_hooks import AdaLoraAllocation, FullModelWeights
from layerwise.train.resume_settings import RECORD_KEY, check_resume, read_record, resume_record
from layerwise.settings import (AdapterChoice, AdaptiveRanks, Calibration, DataSource, ModelSource, SelectionChoice,
                                parse_ranks)

__all__ = ["AdapterChoice", "AdaptiveRanks", "SelectionChoice", "train_job", "parse_ranks", "check_adaptive",
           "make_lalora", "choose_layers", "budget_ranks", "rank_metric_of", "needs_card", "CARD_FREE_POLICIES"]

CARD_FREE_POLICIES = ("all", "manual", "random")
"""Policies that need no Layer Card."""


def choose_layers(card: Any, num_layers: int, choice: SelectionChoice) -> Any:
    """Apply the selection policy (card-free policies work without a card)."""
    from layerwise.selection.policies import Selection, check_options, parse_layers, select

    options = choice.options
    if card is not None:
        return select(card, choice.policy, metric=choice.metric, **options)
    check_options(choice.policy, options)  # `--policy all --k 3`: --k would be ignored
    if choice.policy == "all":
        return Selection(tuple(range(num_layers)), "all", None, {})
    if choice.policy == "manual":
        if "layers" not in options:
            raise ConfigError("--policy manual needs --layers, e.g. --layers 3,4,5")
        return Selection(tuple(parse_layers(str(options["layers"]), num_layers)), "manual", None,
                         {"layers": str(options["layers"])})
    if choice.policy == "random":
        from layerwise.selection.policies import random_layers

        if "k" not in options:
            raise ConfigError("--policy random needs --k, e.g. --k 3")
        draw = options.get("draw", 0)
        return Selection(tuple(random_layers(num_layers, options["k"], draw)), "random", None,
                         {"k": options["k"], "draw": draw})
    raise AssertionError("policies other than all/manual/random get a card first")


def needs_card(selection: SelectionChoice, adapter: AdapterChoice | None, train_config: Any = None) -> bool:
    """Whether the run needs a Layer Card: a policy that ranks layers, ``--rank-budget`` (split by a card
    metric) on any policy, or ``--freeze card`` (the card's ranking sets the freezing order)."""
    return adapter is not None and (selection.policy not in CARD_FREE_POLICIES or adapter.rank_budget is not None
                                    or getattr(train_config, "freeze", "off") == "card")


def rank_metric_of(adapter: AdapterChoice, chosen: Any) -> str | None:
    """The card metric that splits ``--rank-budget``: ``--rank-metric``, else the policy's metric, else
    act_energy; None without a budget."""
    from layerwise.selection.rank_budget import DEFAULT_RANK_METRIC

    if adapter.rank_budget is None:
        return None
    return adapter.rank_metric or chosen.metric or DEFAULT_RANK_METRIC


def budget_ranks(adapter: AdapterChoice, card: Any, chosen: Any) -> AdapterChoice:
    """``adapter`` with ``--rank-budget`` split over the ``chosen`` layers by the card's importance
    (:func:`layerwise.selection.rank_budget.ranks_from_card`) as its per-layer ``ranks``; ``adapter`` itself without a
    budget. Errors name ``--rank-budget`` / ``--rank-metric``."""
    from dataclasses import replace

    from layerwise.selection.rank_budget import ranks_from_card
    from layerwise.settings.fields import flag_name

    metric = rank_metric_of(adapter, chosen)
    if metric is None:
        return adapter
    ranks = ranks_from_card(card, chosen.layers, adapter.rank_budget, metric,
                            budget_name=flag_name(adapter, "rank_budget"),
                            metric_name=flag_name(adapter, "rank_metric"))
    return replace(adapter, ranks=ranks, rank_budget=None, rank_metric=None)


def load_or_make_card(choice: SelectionChoice, ready: Any, calibration: Calibration, out_dir: Path,
                      name: str, needed: bool = False) -> Any:
    """The card a policy (or ``needed``: a rank budget) needs: ``choice.card`` (checked against the model), or
    a new one saved in out_dir/card."""
    from layerwise.runtime import distributed
    from layerwise.card.layer_card import LayerCard, estimated_card_bytes
    from layerwise.card.metrics import IMPORTANCE
    from layerwise.runtime.io import check_free_space
    from layerwise.card.profiling import profile_layers
    from layerwise.workflows.card import calibration_batches, calibration_info

    loaded = ready.loaded
    if choice.card:
        card = LayerCard.load(choice.card)
        card.check_model(loaded.fingerprint)
        return card
    if choice.policy in CARD_FREE_POLICIES and not needed:
        return None
    existing = out_dir / "card" / "card.json"
    if existing.exists():
        card = LayerCard.load(existing)
        card.check_model(loaded.fingerprint)
        return card
    if distributed.is_main():  # before the profile, the long part
        check_free_space(out_dir, estimated_card_bytes(len(ready.stack), len(IMPORTANCE)), "--out", "the card")
    batches = calibration_batches(ready.task, loaded.tokenizer, calibration)
    card = profile_layers(loaded.model, batches, name=name, stack=ready.stack,
                          data_info=calibration_info(ready.task, calibration), device=ready.device,
                          seed=calibration.seed)
    if distributed.is_main():
        card.save(out_dir / "card")
    distributed.barrier()
    return card


def train_job(model: ModelSource | str, data: DataSource | str, out: str | os.PathLike, *, train_config: Any,
              selection: SelectionChoice | None = SelectionChoice(), adapter: AdapterChoice | None = AdapterChoice(),
              calibration: Calibration | None = None, device: str | None = None, resume: bool = False,
              overwrite: bool = False, show_progress: bool = True, callbacks: Sequence[Any] = (),
              settings: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """Select layers, build the adapter, train; returns (TrainResult, Selection). Writes into ``out``
    (and ``config.yaml`` with ``settings``, the command's resolved flags). ``adapter=None`` is full
    fine-tuning (every parameter trained; ``selection`` is ignored).

    ``callbacks`` are passed to :func:`layerwise.train.train` after the job's own (La-LoRA, AdaLoRA).

    Under ``torchrun``/``accelerate launch`` this is data parallel (``--batch-size`` per process; see
    ``layerwise.train.parallel``) and only rank 0 writes.
    """
    from layerwise.runtime.device import resolve_device

    dev = resolve_device(device)  # joins the process group under torchrun / accelerate launch
    with _output_dir(Path(out), resume, overwrite) as out_dir:
        return _train_in(out_dir, model, data, dev, train_config=train_config, selection=selection, adapter=adapter,
                         calibration=calibration, resume=resume, show_progress=show_progress, callbacks=callbacks,
                         settings=settings)


def _train_in(out_dir: Path, model: ModelSource | str, data: DataSource | str, dev: Any, *, train_config: Any,
              selection: SelectionChoice | None, adapter: AdapterChoice | None, calibration: Calibration | None,
              resume: bool, show_progress: bool, callbacks: Sequence[Any],
              settings: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """The body of :func:`train_job` in its claimed ``out_dir``."""
    import torch

    from layerwise.runtime import distributed
    from layerwise.adapters.bridge import apply_adapter
    from layerwise.adapters.rank_limits import check_rank_limits, limits_of_stack
    from layerwise.runtime.io import write_settings
    from layerwise.train import train
    from layerwise.train.freezing import card_importance, check_freeze
    from layerwise.workflows.prepare import data_source, model_source, prepare

    model, data = model_source(model), data_source(data)
    record = resume_record(train_config, model, data, selection if adapter is not None else None, adapter,
                           calibration)
    if resume:  # before anything is written or loaded: a changed setting would change the weights
        check_resume(read_record(out_dir / "selection.json"), record, out_dir)
    check_freeze(train_config, adapter)
    distributed.barrier()  # every rank has checked --out before rank 0 writes into it
    if distributed.is_main():
        write_settings(out_dir, settings)
    if selection is not None and selection.card and adapter is not None:  # a bad --card is refused early
        from layerwise.card.layer_card import LayerCard

        LayerCard.load(selection.card)
    ready = prepare(model, data, dev)
    if adapter is None:  # full fine-tuning: every parameter of the model with its task head
        return _train_full(ready, out_dir, train_config, resume, callbacks, show_progress, record)
    card = load_or_make_card(selection, ready, calibration or Calibration(), out_dir, ready.loaded.source.name,
                             needed=needs_card(selection, adapter, train_config))
    chosen = choose_layers(card, len(ready.stack), selection)
    budget = {"rank_budget": adapter.rank_budget, "rank_metric": rank_metric_of(adapter, chosen)}
    adapter = budget_ranks(adapter, card, chosen)  # --rank-budget: the per-layer ranks it splits into
    check_rank_limits(adapter, limits_of_stack(ready.stack, chosen.layers, adapter.targets),
                      budget=budget["rank_budget"])
    _write_selection(out_dir, chosen, adapter, ready.loaded.fingerprint, budget, record)
    torch.manual_seed(train_config.seed)  # adapter initialisation
    peft_model = apply_adapter(ready.loaded.model, ready.stack, list(chosen.layers), method=adapter.method,
                               targets=adapter.targets, rank=adapter.r_max, alpha=adapter.alpha,
                               ranks=adapter.ranks, dropout=adapter.dropout, total_steps=train_config.steps)
    if not train_config.prefix_dropout:
        from layerwise.train.prefix.frozen import quiet_frozen_prefix

        quiet_frozen_prefix(peft_model, ready.stack, chosen.layers)
    own = [make_lalora(peft_model, ready.stack, chosen.layers, adapter)] if adapter.is_adaptive else []
    if adapter.method == "adalora":
        own.append(AdaLoraAllocation(peft_model))
    result = train(peft_model, ready.loaded.tokenizer, ready.task.task, ready.task.train, ready.task.dev,
                   train_config, out_dir, resume=resume, callbacks=[*own, *callbacks], show_progress=show_progress,
                   weights_writer=own[0] if adapter.is_adaptive else None,  # La-LoRA writes its truncated adapter
                   validation_examples=ready.task.validation,
                   freeze_importance=card_importance(train_config, card))
    return result, chosen


def _train_full(ready: Any, out_dir: Path, train_config: Any, resume: bool, callbacks: Sequence[Any],
                show_progress: bool, record: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """Full fine-tuning in the same loop; the weights folder is the whole model (``FullModelWeights``)."""
    import torch

    from layerwise.runtime import distributed
    from layerwise.runtime.io import atomic_write_json
    from layerwise.selection.policies import Selection
    from layerwise.train import train

    model = ready.loaded.model
    for p in model.parameters():
        p.requires_grad_(True)
    chosen = Selection(tuple(range(len(ready.stack))), "full", None, {})
    if distributed.is_main():
        atomic_write_json(out_dir / "selection.json", {"schema_version": 1, "model": ready.loaded.fingerprint,
                                                       "adapter": None, "selection": chosen.to_dict(),
                                                       RECORD_KEY: dict(record or {})})
    torch.manual_seed(train_config.seed)
    result = train(model, ready.loaded.tokenizer, ready.task.task, ready.task.train, ready.task.dev, train_config,
                   out_dir, resume=resume, callbacks=list(callbacks), show_progress=show_progress,
                   weights_writer=FullModelWeights(), validation_examples=ready.task.validation)
    return result, chosen


def check_adaptive(adapter: AdapterChoice) -> None:
    """Raise :class:`ConfigError` naming the flag for La-LoRA settings outside what is allowed (the settings
    check themselves when made; this checks an adapter that must be adaptive)."""
    if not adapter.is_adaptive:
        raise ConfigError("La-LoRA needs --adaptive-ranks")


def make_lalora(peft_model: Any, stack: Any, layers: Any, adapter: AdapterChoice) -> Any:
    """The La-LoRA callback over the selected ``layers`` of ``peft_model``, from the adapter settings."""
    from layerwise.train.lalora.callback import LaLoRA
    from layerwise.train.lalora.truncation import adapted_blocks

    check_adaptive(adapter)
    a = adapter.adaptive
    return LaLoRA(peft_model, adapted_blocks(peft_model, stack, list(layers)), r_max=adapter.r_max,
                  alpha=adapter.alpha, gamma=a.gamma_or_default, interval=a.rank_interval, car=a.car,
                  fidelity=a.fidelity, contribution=a.contribution, scale=a.rank_scale)


def _ranks_json(adapter: AdapterChoice) -> Any:
    if adapter.is_adaptive:
        a = adapter.adaptive
        return {"mode": "adaptive", "r_max": adapter.r_max, "gamma": a.gamma, "rank_interval": a.rank_interval,
                "car": a.car, "fidelity": a.fidelity, "contribution": a.contribution, "rank_scale": a.rank_scale}
    return {str(k): v for k, v in (adapter.ranks or {}).items()} or None


def _output_dir(out: Path, resume: bool, overwrite: bool) -> Any:
    """The run folder as a context: a resumed run's as it is, else claimed
    (:func:`layerwise.runtime.io.claim_output`)."""
    import contextlib

    from layerwise.runtime.io import check_leftovers, claim_output

    if resume:
        if not (out / "checkpoint").exists():
            raise ConfigError(f"--resume: {out} has no checkpoint/ to resume from")
        check_leftovers(out, resume=True)  # an old run a killed --overwrite left aside: named, kept
        return contextlib.nullcontext(out)
    return claim_output(out, overwrite)


def _write_selection(out_dir: Path, chosen: Any, adapter: AdapterChoice, fingerprint: dict,
                     budget: Mapping[str, Any] | None = None, record: Mapping[str, Any] | None = None) -> None:
    """selection.json: the layers, the adapter they get (``ranks``: the per-layer ranks trained, also those a
    ``budget`` split into) and the model's fingerprint."""
    from layerwise.runtime import distributed
    from layerwise.runtime.io import atomic_write_json

    payload = {"schema_version": 1, "model": fingerprint, "selection": chosen.to_dict(),
               "adapter": {"method": adapter.method, "targets": adapter.targets, "rank": adapter.rank,
                           "alpha": adapter.alpha, "dropout": adapter.dropout,
                           "ranks": _ranks_json(adapter)}, RECORD_KEY: dict(record or {})}
    if budget and budget.get("rank_budget") is not None:
        payload["adapter"].update(budget)
    path = out_dir / "selection.json"
    if path.exists():  # a resumed run must train the same selection
        before = json.loads(path.read_text())
        if before.get("selection", {}).get("layers") != payload["selection"]["layers"]:
            raise ConfigError(f"--resume: {path} selected layers {before['selection']['layers']}, this run selects "
                              f"{payload['selection']['layers']}; resume with the same flags")
    if distributed.is_main():
        atomic_write_json(path, payload)
