"""What the training loop calls on its callbacks: one small Protocol per hook.

A callback is any object; the loop calls each hook it implements (checked with ``isinstance`` against
these runtime-checkable Protocols), in the order the callbacks were given. Whoever writes the final
weights is not a callback but the explicit ``weights_writer`` argument of :func:`layerwise.train.train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["OnStepEnd", "OnEvaluate", "BeforeOptimizerStep", "AfterOptimizerStep", "OnTrainEnd", "Stateful",
           "WeightsWriter"]


@runtime_checkable
class OnStepEnd(Protocol):
    """Called after every optimizer step (after evaluation and checkpoint); may set ``state.stop``."""

    def on_step_end(self, state: Any) -> None: ...


@runtime_checkable
class OnEvaluate(Protocol):
    """Called after each evaluation with the dev metrics."""

    def on_evaluate(self, state: Any, metrics: dict[str, float]) -> None: ...


@runtime_checkable
class BeforeOptimizerStep(Protocol):
    """Called after gradient clipping, right before ``optimizer.step()`` (La-LoRA keeps pruned slices)."""

    def before_optimizer_step(self, optimizer: Any) -> None: ...


@runtime_checkable
class AfterOptimizerStep(Protocol):
    """Called right after ``optimizer.step()`` with the new step number, while gradients still exist."""

    def after_optimizer_step(self, step: int) -> None: ...


@runtime_checkable
class OnTrainEnd(Protocol):
    """Called once on rank 0 after the final weights and ``metrics.json`` are written."""

    def on_train_end(self, state: Any, out_dir: Path) -> None: ...


@runtime_checkable
class Stateful(Protocol):
    """A callback whose state is saved in checkpoints and restored on resume."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class WeightsWriter(Protocol):
    """Writes a weights folder (``adapter/``, ``best/``) instead of peft's ``save_pretrained``."""

    def save_adapter(self, model: Any, path: str | Path) -> Path: ...
