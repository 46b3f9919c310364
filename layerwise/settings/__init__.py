"""Typed settings: every option of layerwise is a documented field of one of these dataclasses, grouped
by concept. The command-line flags, their help, ``--config`` files and the ``config.yaml`` each run
writes are generated from the fields (see :mod:`layerwise.commands.flags`), and each field's checks
raise a :class:`~layerwise.runtime.errors.ConfigError` naming its own flag.

=====================  ==========================================================
``ModelSource``        model, cache dir, remote code, layers path, dtype, quantization
``DataSource``         task, data, columns, kind, dev fraction, max length
``Calibration``        the calibration sample of the Layer Card
``ProbeSettings``      which card metrics, CKA pooling, cost rank and targets
``SelectionChoice``    the selection policy and its options
``AdapterChoice``      peft method, targets, rank, per-layer ranks
``AdaptiveRanks``      La-LoRA's options (``AdapterChoice.adaptive``)
``TrainConfig``        the training run (:mod:`layerwise.train.config`)
``BenchOptions``       the bench's methods, seeds, k values, inference timing
``ExportTarget``       ``layerwise export``'s format and source run
=====================  ==========================================================
"""

from __future__ import annotations

from layerwise.settings.bench import BenchOptions, parse_int_list
from layerwise.settings.calibration import POOLINGS, Calibration, ProbeSettings
from layerwise.settings.choices import AdapterChoice, AdaptiveRanks, SelectionChoice, parse_ranks
from layerwise.settings.export import ExportTarget
from layerwise.settings.fields import flag_name
from layerwise.settings.sources import DEFAULT_MODEL, DEFAULT_TASK, DataSource, ModelSource

__all__ = ["ModelSource", "DataSource", "Calibration", "ProbeSettings", "SelectionChoice", "AdapterChoice",
           "AdaptiveRanks", "BenchOptions", "ExportTarget", "parse_ranks", "parse_int_list", "flag_name", "POOLINGS",
           "DEFAULT_MODEL", "DEFAULT_TASK"]
