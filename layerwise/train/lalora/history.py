"""``RankHistory``: the ranks and budget after every La-LoRA update, and ``rank_history.json``.

``rank_history.json`` (schema 1)::

    {"schema_version": 1, "blocks": [1, 3], "r_max": 8,
     "steps": [0, 1, 2, ...],              # step 0: the initial ranks
     "ranks": [[1, 1], [1, 2], ...],       # one row per step, one column per block
     "budget": [2.0, 2.1, ...]}            # DCDPB after that step's update (Eq. 5)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerwise.runtime.io import atomic_write_json

__all__ = ["HISTORY_NAME", "HISTORY_SCHEMA", "RankHistory", "read_history"]

HISTORY_NAME = "rank_history.json"
HISTORY_SCHEMA = 1


@dataclass
class RankHistory:
    """Ranks per block and the budget after each update, starting with the initial ranks at step 0."""

    blocks: list[int]
    r_max: int
    steps: list[int] = field(default_factory=list)
    ranks: list[list[int]] = field(default_factory=list)
    budget: list[float] = field(default_factory=list)

    def append(self, step: int, ranks: Sequence[int], budget: float) -> None:
        """Record the ranks and budget in force after ``step``."""
        self.steps.append(int(step))
        self.ranks.append([int(r) for r in ranks])
        self.budget.append(float(budget))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (a checkpoint loads them with ``weights_only=True``); exact for the budget (float64)."""
        return {"steps": torch.tensor(self.steps, dtype=torch.int64),
                "ranks": torch.tensor(self.ranks, dtype=torch.int64).reshape(len(self.steps), len(self.blocks)),
                "budget": torch.tensor(self.budget, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.steps = [int(s) for s in state["steps"].tolist()]
        self.ranks = [[int(r) for r in row] for row in state["ranks"].tolist()]
        self.budget = [float(b) for b in state["budget"].tolist()]

    def to_dict(self) -> dict[str, Any]:
        """The ``rank_history.json`` payload."""
        return {"schema_version": HISTORY_SCHEMA, "blocks": list(self.blocks), "r_max": self.r_max,
                "steps": self.steps, "ranks": self.ranks, "budget": self.budget}

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``rank_history.json`` atomically."""
        return atomic_write_json(path, self.to_dict())


def read_history(path: str | os.PathLike) -> RankHistory:
    """Load a ``rank_history.json``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return RankHistory(blocks=data["blocks"], r_max=data["r_max"], steps=data["steps"], ranks=data["ranks"],
                       budget=data["budget"])
