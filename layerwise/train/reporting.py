"""What training tells the person waiting: a log line every ``--logging-steps`` steps (loss, learning rate,
steps/s, ETA) when no progress bar is shown (stderr is not a terminal: nohup, Slurm, a log file), a line per
evaluation, and, with ``--report-to tensorboard``, the same scalars in TensorBoard event files.

The lines are log records of the ``layerwise.train.reporting`` logger (INFO): the ``layerwise`` command prints
them on stderr; a library caller sees them only if its own logging shows INFO records of ``layerwise``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

from layerwise.runtime.errors import ConfigError

__all__ = ["REPORT_TO", "TENSORBOARD_DIR", "TrainingReporter", "format_eta"]

log = logging.getLogger(__name__)

REPORT_TO = ("tensorboard",)
"""``--report-to`` choices."""
TENSORBOARD_DIR = "tensorboard"
"""The folder, inside ``--out``, of the TensorBoard event files."""


def format_eta(seconds: float) -> str:
    """``1h02m``, ``4m05s`` or ``12s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class TrainingReporter:
    """Log lines (when ``lines``) and TensorBoard scalars (when ``report_to`` is ``tensorboard``) of one run."""

    def __init__(self, total_steps: int, start_step: int, logging_steps: int, lines: bool,
                 report_to: str | None = None, out_dir: str | Path | None = None) -> None:
        self.total, self.every, self.lines = total_steps, logging_steps, lines and logging_steps > 0
        self._mark_step, self._mark_time = start_step, time.perf_counter()
        self.writer: Any = None
        if report_to == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ConfigError("--report-to tensorboard needs the tensorboard package: pip install "
                                  "\"layerwise[tensorboard]\"") from err
            self.writer = SummaryWriter(log_dir=str(Path(out_dir or ".") / TENSORBOARD_DIR))
        elif report_to is not None:
            raise ConfigError(f"--report-to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")

    def step(self, step: int, loss: float, lr: float) -> None:
        """After optimizer step ``step`` (1-based)."""
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
        if not self.lines or (step % self.every and step != self.total):
            return
        now = time.perf_counter()
        rate = (step - self._mark_step) / max(now - self._mark_time, 1e-9)
        self._mark_step, self._mark_time = step, now
        eta = format_eta((self.total - step) / rate) if rate > 0 else "?"
        log.info("step %d/%d: loss %.4f, lr %.2e, %.2f steps/s, ETA %s", step, self.total, loss, lr, rate, eta)

    def evaluating(self, step: int, examples: int, split: str = "dev") -> float:
        """Before an evaluation; returns its start time for :meth:`evaluated`."""
        if self.lines:
            log.info("step %d: evaluating on %d %s examples ...", step, examples, split)
        return time.perf_counter()

    def evaluated(self, step: int, metrics: Mapping[str, float], started: float, split: str = "dev") -> None:
        """After an evaluation of ``split`` at ``step``; the time it took is not counted in steps/s."""
        seconds = time.perf_counter() - started
        self._mark_time += seconds
        if self.writer is not None:
            for name, value in metrics.items():
                if value is not None:
                    self.writer.add_scalar(f"{split}/{name}", float(value), step)
        if self.lines:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None)
            log.info("step %d: %s %s (%.1f s)", step, split, shown, seconds)

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
