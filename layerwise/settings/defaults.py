"""The measured defaults, in one place: the README and docs quote these names, and the commands, the policies
and :func:`layerwise.suggest` take their defaults from here.

Each value says what measurement chose it (docs/BENCHMARKS.md, "Results at convergence": MiniLM on MRPC,
3 seeds, up to 3 epochs, checkpoint and learning rate chosen on a validation split held out of train,
2026-11-29)."""

from __future__ import annotations

__all__ = ["LR", "STEPS", "RANKING_METRIC", "CARD_POLICY", "POLICY_WITHOUT_CARD"]

LR = 2e-3
"""Peak learning rate of the commands: uniform LoRA's best of 5e-4, 2e-3 and 5e-3 on the validation split
(validation accuracy 0.7548 against 0.7275 at 5e-4 and 0.6757, the majority class, at 5e-3).
``TrainConfig``'s own default stays 5e-4."""

STEPS = 150
"""Optimizer steps of ``train`` and ``run``."""

RANKING_METRIC = "cka"
"""The metric ``top-k`` and ``threshold`` (and so :func:`layerwise.suggest`) rank by unless told otherwise:
the best-scoring ranking rule measured (top-3 by CKA: -1.1 points against uniform LoRA, inside its seed
spread of 3.3; top-3 by activation norm, Act-LoRA's choice: -7.1 points, below three random blocks' -3.4)."""

CARD_POLICY = "pareto"
"""The policy of ``layerwise run``, and of ``layerwise train --card`` when no ``--policy`` is given: the
balanced point of the importance/cost front (it chose blocks 3, 4, 5, the same as ``budget``: -1.5 points in
57% of uniform LoRA's training time)."""

POLICY_WITHOUT_CARD = "all"
"""The policy of ``layerwise train`` without ``--card`` and ``--policy``: uniform LoRA (no card is made)."""
