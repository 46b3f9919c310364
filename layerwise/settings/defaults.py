"""The measured defaults, in one place: the README and docs quote these names, and the commands, the policies
and :func:`layerwise.suggest` take their defaults from here.

Each value says what measurement chose it (docs/BENCHMARKS.md, "Results at convergence": MiniLM on MRPC,
3 seeds, up to 3 epochs, checkpoint and learning rate chosen on a validation split held out of train,
2026-11-29)."""

from __future__ import annotations

__all__ = ["LR", "STEPS", "RANKING_METRIC", "CARD_POLICY", "CARD_METRIC", "BUDGET_PARAMS_SHARE", "POLICY_WITHOUT_CARD"]

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

CARD_POLICY = "ratio"
"""The policy of ``layerwise run``, and of ``layerwise train --card`` when no ``--policy`` is given, with
:data:`CARD_METRIC`: the top half of the blocks by activation norm (Act-LoRA's top-k at k = L/2). Chosen by
the rule of docs/BENCHMARKS.md ("Default policy", stated before the results) over every converged task
(MiniLM on MRPC; SmolLM2-135M on SST-2 and CoLA; 3 seeds each; 2026-12-06): no policy kept uniform LoRA's
score within 1 point on every task, and this one has the best score per unit of cost (88% of uniform's score
at 67% of its cost, against 1.13 for ``budget``). It loses points everywhere (-7.1 on MRPC, -1.6 on SST-2,
-5.9 Matthews points on CoLA); ``--policy all`` trains uniform LoRA. It replaced ``budget`` (the rule's
pick before the CoLA cells) and ``pareto`` (the first default)."""

CARD_METRIC = "actnorm"
"""The metric of :data:`CARD_POLICY` when neither ``--policy`` nor ``--metric`` is given (an explicit
``--policy`` keeps its own default metric: ``ratio`` alone ranks by ``cka``, as the CKA method's authors)."""

BUDGET_PARAMS_SHARE = 0.5
"""``budget``'s cap when none is given: half of uniform LoRA's adapter parameters, the cap measured above."""

POLICY_WITHOUT_CARD = "all"
"""The policy of ``layerwise train`` without ``--card`` and ``--policy``: uniform LoRA (no card is made)."""
