"""The ``layerwise train`` job: choose layers (from a card or by hand), put a peft adapter there, train it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerwise.errors import ConfigError

__all__ = ["AdapterChoice", "SelectionChoice", "train_job", "parse_ranks", "check_adaptive", "make_lalora",
           "CARD_FREE_POLICIES", "ADAPTIVE"]

CARD_FREE_POLICIES = ("all", "manual")
"""Policies that need no Layer Card."""

ADAPTIVE = "adaptive"
"""The ``--ranks`` value that turns on La-LoRA (layer-wise adaptive ranks during training)."""


@dataclass(frozen=True)
class SelectionChoice:
    """Which layers get adapters: a policy over a card, with its options."""

    policy: str = "all"
    """A registered selection policy (see ``layerwise train --list-policies``)."""
    metric: str | None = None
    """Card metric the policy ranks by (each policy has a default)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Policy options (k, share, ratio, exclude_first, max_params, max_flops, objective, layers)."""
    card: str | None = None
    """A ``card.json`` (or its folder) made for this model; made on the fly when a policy needs one."""


@dataclass(frozen=True)
class AdapterChoice:
    """The peft adapter put on the selected layers."""

    method: str = "lora"
    targets: str = "q,v"
    rank: int = 8
    alpha: float | None = None
    ranks: dict[int, int] | str | None = None
    """Per-layer ranks {layer: rank}, or ``'adaptive'`` for La-LoRA ranks during training (``--ranks adaptive``)."""
    dropout: float = 0.0
    r_max: int | None = None
    """La-LoRA: the largest rank of a block; the adapter is built at this rank (``--r-max``, default ``rank``)."""
    gamma: float | None = None
    """La-LoRA: budget growth rate of Eq. 5 (``--gamma``; None: ``layerwise.adaptive.DEFAULT_GAMMA``)."""
    rank_interval: int = 1
    """La-LoRA: reallocate the ranks every this many steps (``--rank-interval``)."""
    car: bool = True
    """La-LoRA: start the budget at L (one rank per block); False starts at r_max * L (``--no-car``)."""
    fidelity: bool = True
    """La-LoRA: weight the truncated norms by their fidelity (Eq. 9-10); False is ``--no-fidelity``."""
    contribution: str = "norm"
    """La-LoRA: ``norm`` (Eq. 9) or ``fisher`` (accumulated squared gradients) contributions."""
    rank_scale: str = "rmax"
    """La-LoRA: LoRA scaling ``alpha / r_max`` (``rmax``) or ``alpha / r_i`` (``ri``) (``--rank-scale``)."""

    @property
    def adaptive(self) -> bool:
        """True for La-LoRA ranks (``ranks == 'adaptive'``)."""
        return self.ranks == ADAPTIVE


def parse_ranks(spec: str | None) -> dict[int, int] | str | None:
    """``--ranks 3:16,4:8`` -> {3: 16, 4: 8}; ``--ranks adaptive`` -> ``'adaptive'``; errors name the flag."""
    if not spec:
        return None
    if spec.strip() == ADAPTIVE:
        return ADAPTIVE
    out: dict[int, int] = {}
    for part in spec.split(","):
        try:
            layer, rank = part.split(":")
            out[int(layer)] = int(rank)
        except ValueError as err:
            raise ConfigError(f"--ranks takes layer:rank pairs like 3:16,4:8 or 'adaptive', got {part!r}") from err
    return out


def choose_layers(card: Any, num_layers: int, choice: SelectionChoice) -> Any:
    """Apply the selection policy (card-free policies work without a card)."""
    from layerwise.selection import Selection, parse_layers, select

    options = {k: v for k, v in choice.options.items() if v is not None}
    if card is not None:
        return select(card, choice.policy, metric=choice.metric, **options)
    if choice.policy == "all":
        return Selection(tuple(range(num_layers)), "all", None, {})
    if choice.policy == "manual":
        if "layers" not in options:
            raise ConfigError("--policy manual needs --layers, e.g. --layers 3,4,5")
        return Selection(tuple(parse_layers(str(options["layers"]), num_layers)), "manual", None,
                         {"layers": str(options["layers"])})
    raise AssertionError("policies other than all/manual get a card first")


def load_or_make_card(choice: SelectionChoice, loaded: Any, stack: Any, task_data: Any, calibration: Any,
                      out_dir: Path, device: Any) -> Any:
    """The card a policy needs: ``choice.card`` (checked against the model), or a new one saved in out_dir/card."""
    from layerwise import distributed
    from layerwise.card import LayerCard
    from layerwise.profiling import profile_layers
    from layerwise.workflows.card import calibration_batches

    if choice.card:
        card = LayerCard.load(choice.card)
        card.check_model(loaded.fingerprint)
        return card
    if choice.policy in CARD_FREE_POLICIES:
        return None
    existing = out_dir / "card" / "card.json"
    if existing.exists():
        card = LayerCard.load(existing)
        card.check_model(loaded.fingerprint)
        return card
    batches = calibration_batches(task_data, loaded.tokenizer, calibration)
    info = {"task": task_data.task.name, "source": task_data.source, "samples": calibration.samples,
            "seed": calibration.seed, "batch_size": calibration.batch_size, "max_length": calibration.max_length}
    card = profile_layers(loaded.model, batches, name=loaded.source.name, stack=stack, data_info=info,
                          device=device, seed=calibration.seed)
    if distributed.is_main():
        card.save(out_dir / "card")
    distributed.barrier()
    return card


def train_job(model: str, task: str, data: str | None, out: str | os.PathLike, *, train_config: Any,
              selection: SelectionChoice = SelectionChoice(), adapter: AdapterChoice = AdapterChoice(),
              calibration: Any = None, columns: dict[str, str | None] | None = None, regression: bool = False,
              cache_dir: str | None = None, trust_remote_code: bool = False, layers_path: str | None = None,
              device: str | None = None, resume: bool = False, overwrite: bool = False,
              show_progress: bool = True, callbacks: Sequence[Any] = ()) -> tuple[Any, Any]:
    """Select layers, build the adapter, train; returns (TrainResult, Selection). Writes into ``out``.

    ``callbacks`` are passed to :func:`layerwise.train.train` after the job's own (La-LoRA, AdaLoRA).

    Under ``torchrun``/``accelerate launch`` this is data parallel (``--batch-size`` per process; see
    ``layerwise.train.parallel``) and only rank 0 writes.
    """
    import torch

    from layerwise import distributed
    from layerwise.bridge import apply_adapter
    from layerwise.inspection import load_model_for_task, load_task_from_flags
    from layerwise.layers import find_layer_stack
    from layerwise.train import train
    from layerwise.workflows.card import CalibrationSpec, resolve_device

    if adapter.adaptive:
        check_adaptive(adapter)  # before anything is loaded
    dev = resolve_device(device)  # joins the process group under torchrun / accelerate launch
    out_dir = _output_dir(Path(out), resume, overwrite)
    distributed.barrier()  # every rank has checked --out before rank 0 writes into it
    task_data = load_task_from_flags(task, data, columns, regression)
    loaded = load_model_for_task(model, task_data.task, cache_dir, trust_remote_code)
    loaded.model.to(dev)
    stack = find_layer_stack(loaded.model, layers_path)
    card = load_or_make_card(selection, loaded, stack, task_data, calibration or CalibrationSpec(), out_dir, dev)
    chosen = choose_layers(card, len(stack), selection)
    _write_selection(out_dir, chosen, adapter, loaded.fingerprint)
    torch.manual_seed(train_config.seed)  # adapter initialisation
    rank = _r_max(adapter) if adapter.adaptive else adapter.rank  # La-LoRA: built at r_max
    peft_model = apply_adapter(loaded.model, stack, list(chosen.layers), method=adapter.method,
                               targets=adapter.targets, rank=rank, alpha=adapter.alpha,
                               ranks=None if adapter.adaptive else adapter.ranks, dropout=adapter.dropout,
                               total_steps=train_config.steps)
    if not train_config.prefix_dropout:
        from layerwise.train.prefix import quiet_frozen_prefix

        quiet_frozen_prefix(peft_model, stack, chosen.layers)
    own = [make_lalora(peft_model, stack, chosen.layers, adapter)] if adapter.adaptive else []
    if adapter.method == "adalora":
        own.append(AdaLoraAllocation(peft_model))
    result = train(peft_model, loaded.tokenizer, task_data.task, task_data.train, task_data.dev, train_config,
                   out_dir, resume=resume, callbacks=[*own, *callbacks], show_progress=show_progress)
    return result, chosen


class AdaLoraAllocation:
    """AdaLoRA prunes and reallocates its ranks only when ``update_and_allocate`` is called after each
    optimizer step, while the gradients are still there (peft's contract); the loop calls this hook then."""

    def __init__(self, peft_model: Any) -> None:
        self.model = peft_model

    def after_optimizer_step(self, step: int) -> None:
        self.model.base_model.update_and_allocate(step)


def check_adaptive(adapter: AdapterChoice) -> None:
    """Raise :class:`ConfigError` naming the flag for La-LoRA settings outside what is allowed."""
    from layerwise.adaptive.allocator import DEFAULT_GAMMA, check_settings

    if adapter.method != "lora":
        raise ConfigError(f"--ranks adaptive (La-LoRA) needs --method lora, got --method {adapter.method}")
    gamma = DEFAULT_GAMMA if adapter.gamma is None else adapter.gamma
    check_settings(_r_max(adapter), gamma, adapter.rank_interval, adapter.contribution,
                   adapter.rank_scale)


def make_lalora(peft_model: Any, stack: Any, layers: Any, adapter: AdapterChoice) -> Any:
    """The La-LoRA callback over the selected ``layers`` of ``peft_model``, from the adapter flags."""
    from layerwise.adaptive.allocator import DEFAULT_GAMMA
    from layerwise.adaptive.callback import LaLoRA
    from layerwise.adaptive.truncation import adapted_blocks

    check_adaptive(adapter)
    gamma = DEFAULT_GAMMA if adapter.gamma is None else adapter.gamma
    return LaLoRA(peft_model, adapted_blocks(peft_model, stack, list(layers)), r_max=_r_max(adapter),
                  alpha=adapter.alpha, gamma=gamma, interval=adapter.rank_interval, car=adapter.car,
                  fidelity=adapter.fidelity, contribution=adapter.contribution, scale=adapter.rank_scale)


def _r_max(adapter: AdapterChoice) -> int:
    """``--r-max``, defaulting to ``--rank``."""
    return adapter.r_max if adapter.r_max is not None else adapter.rank


def _ranks_json(adapter: AdapterChoice) -> Any:
    if adapter.adaptive:
        return {"mode": ADAPTIVE, "r_max": _r_max(adapter), "gamma": adapter.gamma,
                "rank_interval": adapter.rank_interval, "car": adapter.car, "fidelity": adapter.fidelity,
                "contribution": adapter.contribution, "rank_scale": adapter.rank_scale}
    return {str(k): v for k, v in (adapter.ranks or {}).items()} or None


def _output_dir(out: Path, resume: bool, overwrite: bool) -> Path:
    from layerwise.io import prepare_output_dir

    if resume:
        if not (out / "checkpoint").exists():
            raise ConfigError(f"--resume: {out} has no checkpoint/ to resume from")
        return out
    return prepare_output_dir(out, overwrite)


def _write_selection(out_dir: Path, chosen: Any, adapter: AdapterChoice, fingerprint: dict) -> None:
    from layerwise import distributed
    from layerwise.io import atomic_write_json

    payload = {"schema_version": 1, "model": fingerprint, "selection": chosen.to_dict(),
               "adapter": {"method": adapter.method, "targets": adapter.targets, "rank": adapter.rank,
                           "alpha": adapter.alpha, "dropout": adapter.dropout,
                           "ranks": _ranks_json(adapter)}}
    path = out_dir / "selection.json"
    if path.exists():  # a resumed run must train the same selection
        before = json.loads(path.read_text())
        if before.get("selection", {}).get("layers") != payload["selection"]["layers"]:
            raise ConfigError(f"--resume: {path} selected layers {before['selection']['layers']}, this run selects "
                              f"{payload['selection']['layers']}; resume with the same flags")
    if distributed.is_main():
        atomic_write_json(path, payload)
