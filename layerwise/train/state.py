"""``TrainState``: the progress of a run that checkpoints save and callbacks see, and the callback contract."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

__all__ = ["TrainState", "TrainCallback"]


@dataclass
class TrainState:
    """Everything about a run's progress besides weights, optimizer, scheduler and RNG (JSON-able)."""

    step: int = 0
    """Optimizer steps completed."""
    loss: float | None = None
    """Training loss of the last completed step (mean over its micro-batches)."""
    tokens_seen: int = 0
    """Non-padding training tokens fed to the model so far."""
    train_seconds: float = 0.0
    """Wall time spent in training steps so far, over every session of a resumed run."""
    phase_totals: dict[str, float] = field(default_factory=dict)
    """Seconds per phase summed over every step so far."""
    peak_memory: int = 0
    """Largest per-step peak memory seen so far (bytes)."""
    best_metric: float | None = None
    """Best value of the task's main metric so far (on the validation split when there is one, else dev)."""
    best_step: int | None = None
    """Step of the evaluation that gave ``best_metric``."""
    best_metrics: dict[str, float] | None = None
    """Every dev metric of that best evaluation."""
    best_validation: dict[str, float] | None = None
    """Every validation metric of that best evaluation, when a validation split chooses the checkpoint
    (``best_metric`` is then the validation's main metric)."""
    last_metrics: dict[str, float] | None = None
    """Metrics of the most recent evaluation."""
    last_eval_step: int | None = None
    """Step of the most recent evaluation."""
    bad_evals: int = 0
    """Evaluations in a row without a new best (the early-stopping counter)."""
    stopped_early: bool = False
    """True once early stopping ended the run."""
    should_stop: bool = False
    """Set by a callback to end the run after the current step (not saved: a resumed run goes on)."""

    def to_dict(self) -> dict[str, Any]:
        """The saved fields as a JSON-able dict (``should_stop`` is left out)."""
        out = asdict(self)
        out.pop("should_stop")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@runtime_checkable
class TrainCallback(Protocol):
    """What :func:`layerwise.train.train` calls; implement either method (both are optional).

    ``on_step_end(state)`` runs after each optimizer step (and its evaluation/checkpoint, if due);
    ``on_evaluate(state, metrics)`` after each evaluation. Set ``state.should_stop = True`` to end the run
    normally (final evaluation, adapter, checkpoint); raise ``KeyboardInterrupt`` to interrupt it.

    Optional hooks, called when a callback has them (``layerwise.train.lalora.LaLoRA`` has them all):

    - ``before_optimizer_step(optimizer)``: gradients are final (accumulated, clipped), the step is next;
    - ``after_optimizer_step(step)``: right after ``optimizer.step()`` of step ``step`` (1-based), before the
      schedule step and zeroing the gradients; an exception here ends the run without saving (the last
      checkpoint is kept);
    - ``state_dict()`` / ``load_state_dict(state)``: saved with every checkpoint (tensors, numbers and plain
      containers only) and restored on ``resume`` after the weights and optimizer;
    - ``save_adapter(model, path)``: writes the ``adapter/`` and ``best/`` folders instead of peft's
      ``save_pretrained`` (the first callback that has it);
    - ``on_train_end(state, out_dir)``: after the final adapter and ``metrics.json`` are written.
    """

    def on_step_end(self, state: TrainState) -> None: ...

    def on_evaluate(self, state: TrainState, metrics: dict[str, float]) -> None: ...
