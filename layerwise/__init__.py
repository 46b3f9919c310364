"""layerwise: decide where LoRA goes in a transformer, and how much of it.

The stable API is the names below (``from layerwise import profile_layers, select, apply_adapter``); the
sub-packages are the pipeline's floors (runtime, models/data/settings, card, selection, adapters, train,
evaluate) and may move between releases. docs/API.md lists each name with its signature.

The package import is cheap on purpose (no torch, no transformers): each name is imported from its module on
first use (PEP 562), so ``layerwise --help`` answers instantly.
"""

from __future__ import annotations

import os
from typing import Any

__version__ = "0.1.0"

# The public name -> the module that defines it (and, where the two differ, the name it has there).
_API: dict[str, tuple[str, str]] = {
    # models and data
    "load_model": ("layerwise.models.loading", "load_model"),
    "resolve_model": ("layerwise.models.resolve", "resolve_model"),
    "find_layer_stack": ("layerwise.models.layers", "find_layer_stack"),
    "LayerStack": ("layerwise.models.layers", "LayerStack"),
    "load_task": ("layerwise.data.load", "load_task"),
    "sample_calibration": ("layerwise.data.sampling", "sample_calibration"),
    "make_batches": ("layerwise.data.collate", "make_batches"),
    # the card
    "profile_layers": ("layerwise.card.profiling", "profile_layers"),
    "LayerCard": ("layerwise.card.layer_card", "LayerCard"),
    "IMPORTANCE": ("layerwise.card.metrics", "IMPORTANCE"),
    "register_importance": ("layerwise.card.metrics", "register_importance"),
    # selection
    "select": ("layerwise.selection.policies", "select"),
    "Selection": ("layerwise.selection.policies", "Selection"),
    "POLICIES": ("layerwise.selection.policies", "POLICIES"),
    "register_policy": ("layerwise.selection.policies", "register_policy"),
    "split_rank_budget": ("layerwise.selection.rank_budget", "split_rank_budget"),
    # adapters
    "apply_adapter": ("layerwise.adapters.bridge", "apply_adapter"),
    "build_peft_config": ("layerwise.adapters.bridge", "build_peft_config"),
    "METHODS": ("layerwise.adapters.bridge", "METHODS"),
    "suggest": ("layerwise.adapters.suggestion", "suggest"),
    "Suggestion": ("layerwise.adapters.suggestion", "Suggestion"),
    "ExportedSelection": ("layerwise.adapters.export", "ExportedSelection"),
    "export_from_card": ("layerwise.adapters.export", "from_card"),
    "export_from_run": ("layerwise.adapters.export", "from_run"),
    "write_export": ("layerwise.adapters.export", "write_export"),
    "load_adapter": ("layerwise.adapters.loading", "load_adapter"),
    "LoadedAdapter": ("layerwise.adapters.loading", "LoadedAdapter"),
    # training with someone else's loop (layerwise's own is layerwise.train.train)
    "LaLoRA": ("layerwise.train.lalora.callback", "LaLoRA"),
    "LaLoRATrainerCallback": ("layerwise.train.lalora.trainer", "LaLoRATrainerCallback"),
    "PhaseTimingCallback": ("layerwise.train.callback", "PhaseTimingCallback"),
    "FreezeTrainerCallback": ("layerwise.train.callback", "FreezeTrainerCallback"),
    "FrozenPrefixCallback": ("layerwise.train.prefix.callback", "FrozenPrefixCallback"),
    "prepare_gradient_checkpointing": ("layerwise.train.prefix.recompute", "prepare_gradient_checkpointing"),
    # errors
    "LayerwiseError": ("layerwise.runtime.errors", "LayerwiseError"),
    "ConfigError": ("layerwise.runtime.errors", "ConfigError"),
    "DataError": ("layerwise.runtime.errors", "DataError"),
    "ModelError": ("layerwise.runtime.errors", "ModelError"),
}

__all__ = ["__version__", *_API]

# The modules of the old flat layout (layerwise.profiling, layerwise.bridge, ...) are found in _deprecated/
# for one release: each warns and hands back the module it moved to. Only this package's own path changes.
__path__.append(os.path.join(os.path.dirname(__file__), "_deprecated"))


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use. ``train`` and ``evaluate`` are not among them:
    those are sub-packages (``layerwise.train.train`` is the loop)."""
    if name in _API:
        import importlib

        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'layerwise' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (what tab completion shows)."""
    return sorted(__all__)
