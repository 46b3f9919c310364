"""``PhaseTimingCallback``: per-step time and memory for users of the Hugging Face ``Trainer``.

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

import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from layerwise.train.log import TrainLog
from layerwise.train.phases import PhaseTimer

__all__ = ["PhaseTimingCallback"]

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
