"""La-LoRA inside the Hugging Face ``Trainer``: :class:`LaLoRATrainerCallback` calls :class:`~.callback.LaLoRA`'s
hooks at the Trainer's events.

The Trainer clips the gradients, calls ``on_pre_optimizer_step`` (La-LoRA adds its Fisher sums and keeps the
pruned slices and their optimizer state), steps the optimizer, calls ``on_optimizer_step`` (the pruned slices
come back; every ``interval`` steps new ranks) and only then steps the schedule and zeroes the gradients:
the order :mod:`layerwise.train.loop` uses. At the end the truncated adapter (``rank_pattern``) goes to
``<output_dir>/adapter`` with ``rank_history.json`` and ``ranks.png`` beside it. The Trainer's own
checkpoints hold the untruncated factors; resume a La-LoRA run with ``layerwise train --resume``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from layerwise.train.lalora.callback import LaLoRA

__all__ = ["LaLoRATrainerCallback"]


class LaLoRATrainerCallback(TrainerCallback):
    """Run ``lalora`` (a :class:`LaLoRA` over the model the Trainer trains) at the Trainer's optimizer steps."""

    def __init__(self, lalora: LaLoRA, output_dir: str | os.PathLike | None = None) -> None:
        self.lalora = lalora
        self.output_dir = Path(output_dir) if output_dir is not None else None
        """Where the adapter, rank_history.json and ranks.png go (default: ``TrainingArguments.output_dir``)."""

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                              **kwargs: Any) -> None:
        self.lalora.before_optimizer_step(optimizer)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.lalora.after_optimizer_step(state.global_step + 1)  # the Trainer counts the step after this event

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        out = self.output_dir or Path(args.output_dir)
        if state.is_world_process_zero:
            self.lalora.export_adapter(out / "adapter")
            self.lalora.write_outputs(out)
