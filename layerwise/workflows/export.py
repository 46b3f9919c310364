"""The ``layerwise export`` job: a card's selection (or a finished run's) as a peft, axolotl or JSON config."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

from layerwise.runtime.errors import ConfigError
from layerwise.settings import AdapterChoice, ExportTarget, SelectionChoice

__all__ = ["export_job", "exported_selection"]


def exported_selection(selection: SelectionChoice, adapter: AdapterChoice, target: ExportTarget) -> Any:
    """The :class:`~layerwise.adapters.export.ExportedSelection` of ``target.from_run``, or of ``selection`` over its
    card (``--card``) with ``adapter``. No model is loaded: the card holds every module name."""
    from layerwise.card.layer_card import LayerCard
    from layerwise.adapters.export import from_card, from_run
    from layerwise.adapters.rank_limits import check_rank_limits, limits_of_card
    from layerwise.workflows.train import budget_ranks, choose_layers

    if target.from_run:
        _refuse_ignored(selection, adapter)
        return from_run(target.from_run)
    if not selection.card:
        raise ConfigError("--card is needed (a card.json or its folder, from `layerwise card`), or --from-run DIR "
                          "(a finished `layerwise train` folder)")
    card = LayerCard.load(selection.card)
    chosen = choose_layers(card, card.num_layers, selection)
    path = Path(selection.card) / "card.json" if Path(selection.card).is_dir() else Path(selection.card)
    source = {"card": str(path), "card_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    budgeted = budget_ranks(adapter, card, chosen)
    check_rank_limits(budgeted, limits_of_card(card, chosen.layers, adapter.targets), budget=adapter.rank_budget)
    return from_card(card, chosen.layers, budgeted, policy=chosen.policy,
                     metric=chosen.metric, params=chosen.params, source=source)


def _refuse_ignored(selection: SelectionChoice, adapter: AdapterChoice) -> None:
    """``--from-run`` exports what the run trained: a selection or adapter flag given with it would be ignored
    (and yet recorded in ``config.yaml``), so it is refused, naming the flag."""
    from dataclasses import fields

    from layerwise.settings.fields import flag_name

    for given, default in ((selection, SelectionChoice()), (adapter, AdapterChoice())):
        for f in fields(given):
            if getattr(given, f.name) != getattr(default, f.name):
                raise ConfigError(f"{flag_name(given, f.name)} {getattr(given, f.name)!r} would be ignored: "
                                  "--from-run exports the layers and adapter the run trained; drop "
                                  f"{flag_name(given, f.name)}, or export from --card with it")


def export_job(selection: SelectionChoice, adapter: AdapterChoice, target: ExportTarget, out: str | os.PathLike,
               *, overwrite: bool = False, settings: Mapping[str, Any] | None = None) -> tuple[Any, list[Path]]:
    """Write the exported selection as ``target.format`` into ``out``; returns (ExportedSelection, files
    written). ``out`` is claimed like every command's (:func:`layerwise.runtime.io.claim_output`): a folder holding files
    is refused unless ``overwrite``, which replaces only a layerwise output folder (an export holds
    ``config.yaml`` when ``settings`` are given, as the command gives them, or ``selection.json``), moved aside
    first and put back if the export fails."""
    from layerwise.adapters.export import write_export
    from layerwise.runtime.apart import check_apart
    from layerwise.runtime.io import check_writable_dir, claim_output, write_settings

    check_apart(out, {"--from-run": target.from_run, "--card": selection.card})  # the API too: never its own input
    check_writable_dir(out, "--out")  # before the card is read
    exported = exported_selection(selection, adapter, target)
    with claim_output(out, overwrite) as out_dir:  # an old export is moved aside, and put back on failure
        files = write_export(exported, target.format, out_dir)
        written = write_settings(out_dir, settings)
    return exported, files + ([written] if written else [])
