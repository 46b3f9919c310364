"""``PhaseTimingCallback``: per-step time and memory for users of the Hugging Face ``Trainer``; and
``FreezeTrainerCallback``: the ``--freeze`` schedule in the ``Trainer`` (see its docstring).

The Trainer does not expose the forward/backward split to callbacks, so a step is split at
``on_pre_optimizer_step`` into ``forward_backward`` (every micro-batch's forward and backward, and gradient
clipping) and ``optimizer`` (optimizer step, schedule step, zero grads). Lines follow the
``train_log.jsonl`` format of :func:`layerwise.train.train`; ``forward_s``/``backward_s`` and
``mem_after_forward`` are ``null`` and ``forward_backward_s``/``mem_after_forward_backward`` are added. The
loss is the one the Trainer logs for that step (its mean since the previous log: set ``logging_steps=1``
for a loss on every line). On a GPU the phases are timed with CUDA events and ``on_step_end`` waits for
the step to finish (one sync per step, which the Trainer alone would not make).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from layerwise.train.log import TrainLog
from layerwise.train.phases import PhaseTimer

__all__ = ["PhaseTimingCallback", "FreezeTrainerCallback"]

log = logging.getLogger(__name__)

_PHASES = ("forward_backward", "optimizer")


class PhaseTimingCallback(TrainerCallback):
    """Writes one line per optimizer step (and one per evaluation) to ``log_path``.

    ``log_path`` defaults to ``<TrainingArguments.output_dir>/train_log.jsonl``. ``timer`` holds the
    running phase totals after training.
    """

    def __init__(self, log_path: str | os.PathLike | None = None) -> None:
        self.log_path = Path(log_path) if log_path is not None else None
        self.timer: PhaseTimer | None = None
        self._log: TrainLog | None = None
        self._pending: dict | None = None
        self._lr: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        device = next(model.parameters()).device if model is not None else None
        self.timer = PhaseTimer(device, phases=_PHASES)
        if self.log_path is None:
            self.log_path = Path(args.output_dir) / "train_log.jsonl"
        self._log = TrainLog(self.log_path, keep_through=state.global_step or None)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._flush()
        assert self.timer is not None, "on_train_begin was not called"
        self.timer.begin_step(state.global_step + 1)
        self.timer.start("forward_backward")

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                              **kwargs: Any) -> None:
        self.timer.stop("forward_backward")
        self._lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
        self.timer.start("optimizer")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.timer.stop("optimizer")
        record = self.timer.end_step()
        self._pending = {"step": state.global_step, "loss": None, "lr": self._lr,
                         "forward_s": None, "backward_s": None, "optimizer_s": record["optimizer_s"],
                         "mem_after_forward": None, "mem_after_backward": record["mem_after_forward_backward"],
                         "mem_after_optimizer": record["mem_after_optimizer"], "peak_memory": record["peak_memory"],
                         "step_s": record["step_s"], "forward_backward_s": record["forward_backward_s"],
                         "mem_after_forward_backward": record["mem_after_forward_backward"]}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if self._pending is not None and logs and "loss" in logs and self._pending["step"] == state.global_step:
            self._pending["loss"] = float(logs["loss"])

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        self._flush()
        if self._log is not None and metrics:
            self._log.write_eval(state.global_step, {k: float(v) for k, v in metrics.items()
                                                     if isinstance(v, (int, float))})

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._flush()
        if self._log is not None:
            self._log.close()

    def _flush(self) -> None:
        if self._pending is not None and self._log is not None:
            self._log.write(self._pending)
        self._pending = None


class FreezeTrainerCallback(TrainerCallback):
    """``--freeze auto|card`` in the Hugging Face ``Trainer``: the same criteria as :func:`layerwise.train.train`
    (:mod:`layerwise.train.freeze`), without the prefix cache.

    The adapted blocks of the peft ``model`` (those with a trainable parameter) freeze bottom-up: a frozen
    block's adapter gets ``requires_grad=False`` (the backward then stops above it) and its optimizer state is
    dropped. ``mode='auto'`` checks every ``every`` optimizer steps; the signal is each block's adapter
    gradient norm summed over the interval, read in ``on_pre_optimizer_step``, which the Trainer calls *after*
    clipping (``layerwise train`` reads it before clipping: with ``max_grad_norm`` reached, the two differ by the
    clip factor of each step). ``mode='card'`` needs ``importance`` (the card's importance per block, e.g.
    ``LayerCard.importance('resnorm')``) and freezes at ``start..end`` of ``state.max_steps``.

    ``record`` holds the freeze step per block, the trainable depth over time and the checks; it is written to
    ``<output_dir>/freeze.json`` at the end. Not for multi-process training (each rank would decide alone).
    """

    def __init__(self, model: Any, mode: str = "auto", every: int = 50, percentile: float = 50.0,
                 keep_top: int = 1, start: float = 0.1, end: float = 0.5,
                 importance: Any = None) -> None:
        import torch

        from layerwise.models.layers import find_layer_stack
        from layerwise.runtime.errors import ConfigError
        from layerwise.train.freeze import FreezeState
        from layerwise.train.freezing import adapted_block_parameters

        if mode not in ("auto", "card"):
            raise ConfigError(f"FreezeTrainerCallback: mode must be 'auto' or 'card', got {mode!r}")
        if mode == "card" and importance is None:
            raise ConfigError("FreezeTrainerCallback(mode='card') needs importance (the card's, per block)")
        if mode == "auto" and every < 1:
            raise ConfigError(f"FreezeTrainerCallback: every must be >= 1, got {every}")
        self.mode, self.every, self.percentile, self.keep_top = mode, every, percentile, keep_top
        self.start, self.end = start, end
        self.blocks, self.params = adapted_block_parameters(model, find_layer_stack(model))
        self.importance = None if importance is None else [float(importance[b]) for b in self.blocks]
        self.state = FreezeState(freeze_steps=[None] * len(self.blocks), depth=[[0, len(self.blocks)]])
        self.schedule: list[int] = []
        self.accumulated = torch.zeros(len(self.blocks), dtype=torch.float64)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from layerwise.train.freeze import card_schedule, schedule_warning

        if self.mode == "card":
            self.schedule = card_schedule(self.importance, state.max_steps, self.keep_top, self.start, self.end)
            warning = schedule_warning(self.schedule, self.blocks)
            if warning:
                log.warning(warning)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch

        if self.mode != "auto":
            return
        for pos in range(self.state.frozen, len(self.blocks)):
            grads = [p.grad for _, p in self.params[pos] if p.grad is not None]
            if grads:
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
                self.accumulated[pos] += float(norm)

    def on_step_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        from layerwise.train.freeze import auto_decision

        step, st = state.global_step, self.state
        if self.mode == "card":
            while st.frozen < len(self.schedule) and step >= self.schedule[st.frozen]:
                self._freeze(step, optimizer)
            return
        if step % self.every or step >= state.max_steps:
            return
        current = self.accumulated.tolist()
        fire, info = auto_decision(st.previous, current, st.frozen, self.keep_top, self.percentile)
        st.checks.append({"step": step, **info, "froze": fire})
        st.previous = current
        self.accumulated.zero_()
        if fire:
            self._freeze(step, optimizer)

    def _freeze(self, step: int, optimizer: Any) -> None:
        st = self.state
        pos = st.frozen
        for _, p in self.params[pos]:
            p.requires_grad_(False)
            p.grad = None
            if optimizer is not None:
                optimizer.state.pop(p, None)
        st.frozen += 1
        st.freeze_steps[pos] = step
        st.depth.append([step, len(self.blocks) - st.frozen])

    @property
    def record(self) -> dict:
        """Blocks, freeze step per block, trainable depth over time and the checks."""
        return {"mode": self.mode, "blocks": list(self.blocks),
                "freeze_step": {str(b): s for b, s in zip(self.blocks, self.state.freeze_steps)},
                "depth": self.state.depth, "card_schedule": self.schedule or None, "checks": self.state.checks}

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from layerwise.runtime.io import atomic_write_json
        from layerwise.train.log import json_safe

        if state.is_world_process_zero:
            atomic_write_json(Path(args.output_dir) / "freeze.json", json_safe(self.record))
