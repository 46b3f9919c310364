"""The old flat layout's module paths, kept for one release (0.1.x) after the move into floors.

``layerwise/__init__.py`` appends this folder to the package's ``__path__``, so ``import layerwise.profiling``
finds ``_deprecated/profiling.py`` (no module of that name is left at the top). Each of those files calls
:func:`alias`, which warns once with the new import and makes the old name the new module itself (the same
object: patching one patches the other). ``layerwise.card`` and ``layerwise.selection`` are packages now; their
``__getattr__`` hands out the old modules' names through :func:`forward`. Delete this folder in 0.2.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType
from typing import Any

__all__ = ["MOVED", "alias", "forward", "package"]

MOVED: dict[str, str] = {
    "layerwise.io": "layerwise.runtime.io",
    "layerwise.memory": "layerwise.runtime.memory",
    "layerwise.progress": "layerwise.runtime.progress",
    "layerwise.quiet": "layerwise.runtime.quiet",
    "layerwise.errors": "layerwise.runtime.errors",
    "layerwise.device": "layerwise.runtime.device",
    "layerwise.distributed": "layerwise.runtime.distributed",
    "layerwise.figures": "layerwise.runtime.figures",
    "layerwise.layers": "layerwise.models.layers",
    "layerwise.evaluation": "layerwise.data.task_metrics",
    "layerwise.card": "layerwise.card.layer_card",
    "layerwise.card_render": "layerwise.card.render",
    "layerwise.importance": "layerwise.card.metrics",
    "layerwise.probe": "layerwise.card.probe",
    "layerwise.probe.plan": "layerwise.card.probe.plan",
    "layerwise.weight_card": "layerwise.card.weight_card",
    "layerwise.cost": "layerwise.card.cost",
    "layerwise.profiling": "layerwise.card.profiling",
    "layerwise.stability": "layerwise.card.stability",
    "layerwise.selection": "layerwise.selection.policies",
    "layerwise.rank_budget": "layerwise.selection.rank_budget",
    "layerwise.suggestion": "layerwise.adapters.suggestion",
    "layerwise.bridge": "layerwise.adapters.bridge",
    "layerwise.export": "layerwise.adapters.export",
    "layerwise.adaptive": "layerwise.train.lalora",
    "layerwise.inference": "layerwise.evaluate.inference",
    "layerwise.report": "layerwise.evaluate.report",
    "layerwise.stability_render": "layerwise.evaluate.stability_render",
}
"""Old module path -> the module it moved to (docs/ARCHITECTURE.md has the layout)."""


def _warn(old: str, new: str, stacklevel: int = 4) -> None:
    # stacklevel 4: this function, alias/forward, the shim module or __getattr__, then the importer
    # (importlib's own frames are skipped by the warnings machinery).
    warnings.warn(f"{old} is deprecated and goes in layerwise 0.2: import from {new} instead (or from the "
                  "top-level layerwise API, docs/API.md)", DeprecationWarning, stacklevel=stacklevel)


def package(name: str) -> None:
    """Warn from the ``__init__`` of an old package's shim (its names come from its ``__getattr__``)."""
    _warn(name, MOVED[name])


def alias(name: str) -> ModuleType:
    """Make the old module path ``name`` the module it moved to, with a DeprecationWarning naming it."""
    new = MOVED[name]
    _warn(name, new)
    module = importlib.import_module(new)
    sys.modules[name] = module  # the import system hands back what sys.modules holds after the shim ran
    return module


def forward(old: str, attr: str) -> Any:
    """``old.attr`` for a package that took an old module's name (``layerwise.card``, ``layerwise.selection``):
    the attribute of the module it moved to, with a DeprecationWarning; AttributeError if it never had one."""
    if attr.startswith("__"):  # the import system's own look-ups (__path__, __file__, ...)
        raise AttributeError(f"module {old!r} has no attribute {attr!r}")
    module = importlib.import_module(MOVED[old])
    if attr not in getattr(module, "__all__", ()):
        raise AttributeError(f"module {old!r} has no attribute {attr!r}")
    _warn(f"{old}.{attr}", f"{MOVED[old]} (layerwise.{attr} where the top level has it)")
    return getattr(module, attr)
