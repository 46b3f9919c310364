"""One call on a model the user already loaded: measure its blocks, choose layers, hand back a peft config.

``suggest(model, batches)`` takes a transformers model with any head (or none) and calibration batches the user
already made (a ``DataLoader`` or a list of dicts of tensors). With ``labels`` in the batches, or a
``loss_fn(outputs, batch)``, the card gets every default metric; without either, only the forward ones
(``actnorm``, ``cka``, ``act_energy``) and ``cost``, and the policy ranks by
:data:`layerwise.settings.defaults.RANKING_METRIC` (``cka``, the best ranking measured) unless told otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerwise.runtime.errors import ConfigError, LayerwiseError

if TYPE_CHECKING:  # only for the annotations: importing layerwise stays free of torch and peft
    import torch
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


def suggest(model: torch.nn.Module, batches: Iterable[Mapping[str, Any]], policy: str = "top-k", *,
            metric: str | None = None, metrics: str | Sequence[str] | None = None,
            loss_fn: Callable[[Any, dict], Any] | None = None, method: str = "lora", targets: str = "q,v",
            rank: int = 8, alpha: float | None = None, ranks: Mapping[int, int] | None = None,
            rank_budget: int | None = None, rank_metric: str | None = None, name: str | None = None,
            device: str | torch.device | None = None, show_progress: bool = True, layers_path: str | None = None,
            k: int | None = None, share: float | None = None, ratio: float | None = None,
            exclude_first: bool | None = None, max_params: int | None = None, max_flops: float | None = None,
            params_share: float | None = None, objective: str | None = None, layers: str | None = None,
            draw: int | None = None) -> Suggestion:
    """Measure ``model``'s blocks on ``batches`` and choose layers with ``policy`` and its options (``k=3``,
    ``share=0.9``, ``ratio=0.5``, ``max_params=...``; each policy takes those ``layerwise train
    --list-policies`` lists, and an option it does not take is refused).

    ``metrics`` overrides the card's metrics; ``method``/``targets``/``rank``/``alpha``/``ranks`` are the
    adapter's (as ``layerwise train`` takes them). ``rank_budget`` splits a total rank over the chosen layers in
    proportion to the card's ``rank_metric`` importance (default: the policy's metric, else ``act_energy``;
    :func:`layerwise.selection.rank_budget.split_rank_budget`), which becomes the per-layer ranks. ``name`` is what the
    card and the peft config record as the base model (default: ``model.name_or_path``, the hub id or folder the
    user loaded). ``layers_path`` is the dotted path of the block list of a model whose blocks layerwise does not
    recognise. The model is left as it was (mode, ``requires_grad`` flags); nothing is written until
    :meth:`Suggestion.save`.

    Every argument is checked before the probe runs; errors (:class:`~layerwise.runtime.errors.ConfigError`)
    name the parameter (``k=``, ``layers_path=``), not the command's flag.

    Progress: with ``show_progress`` a bar over the batches is drawn where bars are shown (a terminal, or
    ``LAYERWISE_PROGRESS=1`` for a notebook or a log file; ``=0`` never); the start and the end of the probe
    are also INFO records of the ``layerwise`` logger (seen when the caller's logging shows them).
    """
    options = {"k": k, "share": share, "ratio": ratio, "exclude_first": exclude_first, "max_params": max_params,
               "max_flops": max_flops, "params_share": params_share, "objective": objective, "layers": layers,
               "draw": draw}
    try:
        return _suggest(model, batches, policy, metric, metrics, loss_fn, method, targets, rank, alpha, ranks,
                        rank_budget, rank_metric, name, device, show_progress, layers_path,
                        {key: v for key, v in options.items() if v is not None})
    except LayerwiseError as err:
        raise type(err)(api_words(str(err))).with_traceback(err.__traceback__) from None


def _suggest(model: Any, batches: Any, policy: str, metric: str | None, metrics: Any, loss_fn: Any, method: str,
             targets: str, rank: int, alpha: float | None, ranks: Any, rank_budget: int | None,
             rank_metric: str | None, name: str | None, device: Any, show_progress: bool, layers_path: str | None,
             options: dict[str, Any]) -> Suggestion:
    import torch

    from layerwise.adapters.export import from_card
    from layerwise.card.metrics import IMPORTANCE, get_metrics
    from layerwise.models.layers import find_layer_stack, parse_targets
    from layerwise.card.profiling import profile_layers
    from layerwise.selection.policies import POLICIES, check_options, select
    from layerwise.settings import AdapterChoice, SelectionChoice

    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"suggest: model= must be a loaded torch model (e.g. from transformers' "
                          f"from_pretrained, or layerwise.load_model(...).model), got {_shown(model)}")
    if batches is None or isinstance(batches, (str, bytes, Mapping)) or not hasattr(batches, "__iter__"):
        raise ConfigError(f"suggest: batches= must be an iterable of dicts with an input_ids tensor (a DataLoader "
                          f"or a list of dicts), got {_shown(batches)}")
    if not isinstance(policy, str) or policy not in POLICIES:
        raise ConfigError(f"suggest: policy= must be one of {', '.join(POLICIES)}, got {policy!r}")
    _check_types(options, rank=rank, rank_budget=rank_budget)
    if ranks and rank_budget is not None:
        raise ConfigError("suggest: give ranks or rank_budget, not both")
    # the settings' own checks (their messages name flags; api_words turns them into parameter names)
    SelectionChoice(policy=policy, metric=metric, **options)
    adapter = AdapterChoice(method=method, targets=targets, rank=rank, alpha=alpha,
                            ranks=dict(ranks) if ranks else None, rank_budget=rank_budget, rank_metric=rank_metric)
    check_options(policy, options)
    from layerwise.card.profiling import plain_model

    # an unknown architecture is named before any batch is read (blocks found under peft/torch.compile wrappers)
    stack = find_layer_stack(plain_model(model), layers_path)
    from layerwise.adapters.rank_limits import check_rank_limits, limits_of_stack

    # --rank and --ranks before the probe (over every block the policy may choose); a budget's split after it
    check_rank_limits(adapter, limits_of_stack(stack, range(len(stack.blocks)), targets))
    listed = [dict(b) for b in batches]  # a DataLoader is read once; the probe needs len() and two passes at most
    if not listed or not all(isinstance(b.get("input_ids"), torch.Tensor) for b in listed):
        raise ConfigError("suggest: batches= must hold dicts with an input_ids tensor (a DataLoader or a list of "
                          "dicts)")
    _check_labels(model, listed)
    labelled = loss_fn is not None or all("labels" in b for b in listed)
    chosen_metrics = metrics if metrics is not None else (None if labelled else list(FORWARD_METRICS))
    measured = [m.name for m in get_metrics(chosen_metrics)]
    for given, what in ((metric, "metric"), (rank_metric, "rank_metric")):
        if given is not None and given not in IMPORTANCE:
            raise ConfigError(f"suggest: {what}={given!r} is not a metric; known: {', '.join(IMPORTANCE)}")
        if given is not None and given not in measured:
            raise ConfigError(f"suggest: {what}={given!r} is not among the metrics measured ({', '.join(measured)}); "
                              f"pass metrics= with it" + ("" if labelled else " and batches with labels or a loss_fn"))
    card_name = name or getattr(model, "name_or_path", None) or type(model).__name__
    from layerwise.runtime.progress import status

    with status(f"suggest: measuring the blocks of {card_name} on {len(listed)} batches "
                f"({'forward and backward' if labelled else 'forward only'})"):
        card = profile_layers(model, listed, chosen_metrics, name=card_name, stack=stack, rank=rank,
                              targets=parse_targets(targets), device=device, show_progress=show_progress,
                              loss_fn=loss_fn)
    selection = select(card, policy, metric=metric, **options)
    if rank_budget is not None:
        from layerwise.selection.rank_budget import DEFAULT_RANK_METRIC, ranks_from_card

        ranks = ranks_from_card(card, selection.layers, rank_budget,
                                rank_metric or selection.metric or DEFAULT_RANK_METRIC)
    adapter = AdapterChoice(method=method, targets=targets, rank=rank, alpha=alpha,
                            ranks=dict(ranks) if ranks else None)
    check_rank_limits(adapter, limits_of_stack(stack, selection.layers, targets), budget=rank_budget)
    exported = from_card(card, selection.layers, adapter, policy=selection.policy, metric=selection.metric,
                         params=selection.params)
    return Suggestion(card=card, selection=selection, exported=exported)


_INT_OPTIONS = ("k", "max_params", "draw", "rank", "rank_budget")
_FLOAT_OPTIONS = ("share", "ratio", "max_flops", "params_share")


def _check_types(options: Mapping[str, Any], **more: Any) -> None:
    """Numbers as numbers: ``k="2"`` is refused naming ``k=`` (the settings would name the flag ``--k``)."""
    for key, value in {**options, **more}.items():
        if value is None:
            continue
        if key in _INT_OPTIONS and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"suggest: {key}= must be an int, got {_shown(value)}")
        if key in _FLOAT_OPTIONS and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"suggest: {key}= must be a number, got {_shown(value)}")
        if key == "exclude_first" and not isinstance(value, bool):
            raise ConfigError(f"suggest: exclude_first= must be True or False, got {_shown(value)}")


def _check_labels(model: Any, batches: list[dict]) -> None:
    """Class labels outside the model's ``num_labels`` would be torch's IndexError deep in the loss."""
    config = getattr(model, "config", None)
    n = getattr(config, "num_labels", None)
    if n is None or getattr(config, "problem_type", None) == "regression" or not \
            type(model).__name__.endswith("ForSequenceClassification"):
        return
    for i, batch in enumerate(batches):
        labels = batch.get("labels")
        if labels is None or labels.is_floating_point():
            continue
        bad = labels[(labels != -100) & ((labels < 0) | (labels >= n))]
        if bad.numel():
            raise ConfigError(f"suggest: batches= batch {i} has label {int(bad[0])}, outside 0..{n - 1} of the "
                              f"model's {n} labels (config.num_labels); load the model with num_labels= the "
                              "number of classes, or fix the labels")


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}" if not isinstance(value, (str, int, float)) else text


def api_words(message: str) -> str:
    """A settings message for the Python API: ``--layers-path`` -> ``layers_path=``, ``--k`` -> ``k=``."""
    import re

    return re.sub(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)", lambda m: m.group(1).replace("-", "_") + "=",
                  message)
