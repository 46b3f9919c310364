"""One call on a model the user already loaded: measure its blocks, choose layers, hand back a peft config.

``suggest(model, batches)`` takes a transformers model with any head (or none) and calibration batches the user
already made (a ``DataLoader`` or a list of dicts of tensors). With ``labels`` in the batches, or a
``loss_fn(outputs, batch)``, the card gets every default metric; without either, only the forward ones
(``actnorm``, ``cka``, ``act_energy``) and ``cost``, and the policy ranks by
:data:`layerwise.settings.defaults.RANKING_METRIC` (``cka``, the best ranking measured) unless told otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerwise.runtime.errors import ConfigError

if TYPE_CHECKING:  # only for the annotations: importing layerwise stays free of torch and peft
    from peft import PeftConfig

    from layerwise.adapters.export import ExportedSelection
    from layerwise.card.layer_card import LayerCard
    from layerwise.selection.policies import Selection

__all__ = ["Suggestion", "suggest", "FORWARD_METRICS"]

FORWARD_METRICS = ("actnorm", "cka", "act_energy", "cost")
"""The card's metrics when the batches have no labels and no loss function is given."""


@dataclass(frozen=True)
class Suggestion:
    """Where the adapters go: the card measured, the layers chosen and their ranks."""

    card: LayerCard
    """The :class:`~layerwise.card.layer_card.LayerCard` of the model on the batches."""
    selection: Selection
    """The :class:`~layerwise.selection.policies.Selection` the policy made."""
    exported: ExportedSelection
    """The selection with portable module names (:class:`~layerwise.adapters.export.ExportedSelection`)."""

    @property
    def layers(self) -> list[int]:
        """Chosen block indices, sorted."""
        return list(self.selection.layers)

    @property
    def ranks(self) -> dict[int, int]:
        """Rank of each chosen block."""
        return {i: self.exported.rank_of(i) for i in self.layers}

    def __repr__(self) -> str:
        """One line: the policy, the metric, the layers and their ranks (the card and module names are in the
        attributes)."""
        sel = self.selection
        ranks = sorted(set(self.ranks.values()))
        rank = str(ranks[0]) if len(ranks) == 1 else ",".join(f"{i}:{r}" for i, r in self.ranks.items())
        return (f"Suggestion(policy={sel.policy!r}, metric={sel.metric!r}, layers={self.layers}, "
                f"rank={rank}, method={self.exported.method!r}, targets={self.exported.targets_spec!r}, "
                f"modules={len(self.exported.targets)}, of {self.card.num_layers} layers)")

    def lora_config(self, **peft_kwargs: Any) -> PeftConfig:
        """The peft config that adapts exactly the chosen modules of this model with any head (``peft_kwargs``,
        e.g. ``task_type="SEQ_CLS"`` or ``lora_dropout=0.1``, go to the config class)."""
        from layerwise.adapters.export import peft_config

        return peft_config(self.exported, **peft_kwargs)

    def save(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write ``card/`` (card.json, card.md), ``selection.json`` and ``adapter_config.json`` into ``out_dir``."""
        from layerwise.adapters.export import write_export

        out = Path(out_dir)
        files = list(self.card.save(out / "card", plots=False).values())
        return files + write_export(self.exported, "json", out) + write_export(self.exported, "peft", out)


def suggest(model: Any, batches: Iterable[Mapping[str, Any]], policy: str = "top-k", *, metric: str | None = None,
            metrics: str | list[str] | None = None, loss_fn: Callable[[Any, dict], Any] | None = None,
            method: str = "lora", targets: str = "q,v", rank: int = 8, alpha: float | None = None,
            ranks: Mapping[int, int] | None = None, rank_budget: int | None = None,
            rank_metric: str | None = None, name: str | None = None, device: Any = None,
            show_progress: bool = True, **options: Any) -> Suggestion:
    """Measure ``model``'s blocks on ``batches`` and choose layers with ``policy`` and its ``options``
    (``k=3``, ``share=0.9``, ``ratio=0.5``, ``max_params=...``; see ``layerwise train --list-policies``).

    ``metrics`` overrides the card's metrics; ``method``/``targets``/``rank``/``alpha``/``ranks`` are the
    adapter's (as ``layerwise train`` takes them). ``rank_budget`` splits a total rank over the chosen layers in
    proportion to the card's ``rank_metric`` importance (default: the policy's metric, else ``act_energy``;
    :func:`layerwise.selection.rank_budget.split_rank_budget`), which becomes the per-layer ranks. ``name`` is what the
    card and the peft config record as the base model (default: ``model.name_or_path``, the hub id or folder the
    user loaded). The model is left as it was (mode, ``requires_grad`` flags); nothing is written until
    :meth:`Suggestion.save`.

    Progress: with ``show_progress`` a bar over the batches is drawn where bars are shown (a terminal, or
    ``LAYERWISE_PROGRESS=1`` for a notebook or a log file; ``=0`` never); the start and the end of the probe
    are also INFO records of the ``layerwise`` logger (seen when the caller's logging shows them).
    """
    import torch

    from layerwise.adapters.export import from_card
    from layerwise.models.layers import parse_targets
    from layerwise.card.profiling import profile_layers
    from layerwise.selection.policies import select
    from layerwise.settings import AdapterChoice

    if ranks and rank_budget is not None:
        raise ConfigError("suggest: give ranks or rank_budget, not both")
    listed = [dict(b) for b in batches]  # a DataLoader is read once; the probe needs len() and two passes at most
    if not listed or not all(isinstance(b.get("input_ids"), torch.Tensor) for b in listed):
        raise ConfigError("suggest needs batches: dicts with an input_ids tensor (a DataLoader or a list of dicts)")
    labelled = loss_fn is not None or all("labels" in b for b in listed)
    chosen_metrics = metrics if metrics is not None else (None if labelled else list(FORWARD_METRICS))
    card_name = name or getattr(model, "name_or_path", None) or type(model).__name__
    from layerwise.runtime.progress import status

    with status(f"suggest: measuring the blocks of {card_name} on {len(listed)} batches "
                f"({'forward and backward' if labelled else 'forward only'})"):
        card = profile_layers(model, listed, chosen_metrics, name=card_name, rank=rank,
                              targets=parse_targets(targets), device=device, show_progress=show_progress,
                              loss_fn=loss_fn)
    selection = select(card, policy, metric=metric, **options)
    if rank_budget is not None:
        from layerwise.selection.rank_budget import DEFAULT_RANK_METRIC, ranks_from_card

        ranks = ranks_from_card(card, selection.layers, rank_budget,
                                rank_metric or selection.metric or DEFAULT_RANK_METRIC)
    adapter = AdapterChoice(method=method, targets=targets, rank=rank, alpha=alpha,
                            ranks=dict(ranks) if ranks else None)
    exported = from_card(card, selection.layers, adapter, policy=selection.policy, metric=selection.metric,
                         params=selection.params)
    return Suggestion(card=card, selection=selection, exported=exported)
