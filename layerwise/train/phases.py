"""``PhaseTimer``: wall time and memory of the named phases of each training step, at near-zero cost.

    timer.begin_step(step)
    with timer.phase("forward"):
        loss = model(**batch).loss
    ...
    record = timer.end_step()   # {step, forward_s, ..., mem_after_forward, ..., peak_memory, step_s}

On the CPU a phase is timed with ``time.perf_counter`` and memory is the process RSS; the step's peak is
the kernel's high-water mark of RSS over the step (exact, see ``layerwise.runtime.memory.CpuPeak``), or where that
is unavailable the largest RSS read after a phase (a lower bound: spikes inside a phase are not seen).

On a GPU the work is asynchronous, so a phase is bracketed by CUDA events (recorded in the stream, no
host-device sync) and the times are read once, in ``end_step``, after waiting for the step's last event. A
``torch.cuda.synchronize`` per phase would stall the CPU's kernel launches behind the GPU at every
boundary: on an H100 that made LoRA steps of a BERT-base-sized model 7-10% slower than a plain loop,
against 0-2.5% with events (the loop syncs once per step anyway, for the loss). A phase's time is the
span between its two events on the GPU's timeline. Memory is ``torch.cuda.memory_allocated`` (the
allocator's count, exact without a sync) and the step's peak ``max_memory_allocated`` since
``begin_step``. Note that ``begin_step`` resets CUDA's peak-memory statistics: around a training run, read
the run's peak from the timer (or ``TrainResult``), not from a surrounding ``layerwise.runtime.memory.PeakMemory``.

A phase entered several times in one step (gradient accumulation) adds up its time; its memory is the last
reading.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from layerwise.runtime.memory import CpuPeak, cpu_peak_tracking_exact

__all__ = ["PhaseTimer", "TRAIN_PHASES"]

TRAIN_PHASES = ("forward", "backward", "optimizer")
"""The phases of a training step in :func:`layerwise.train.train`."""


class _Phase:
    """Reusable context manager for one phase name (made once, so entering a phase allocates nothing)."""

    __slots__ = ("timer", "name")

    def __init__(self, timer: "PhaseTimer", name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.timer.start(self.name)

    def __exit__(self, *exc: object) -> None:
        self.timer.stop(self.name)


class PhaseTimer:
    """Per-step time and memory of named phases, with running totals over all steps.

    ``device`` is where the model lives (``None`` or a CPU device: CPU accounting). ``keep_records``
    keeps every step's record in ``records`` (off in long runs: the train log already has them).
    """

    def __init__(self, device: Any = None, phases: Sequence[str] = TRAIN_PHASES, keep_records: bool = False) -> None:
        import torch

        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.cuda = self.device.type == "cuda"
        self.phases = tuple(phases)
        self.totals = dict.fromkeys(self.phases, 0.0)
        """Seconds per phase summed over every finished step."""
        self.steps = 0
        """Number of finished steps."""
        self.peak_memory = 0
        """Largest per-step peak seen so far (bytes)."""
        self.records: list[dict] = []
        self._keep = keep_records
        self._contexts = {name: _Phase(self, name) for name in self.phases}
        self._seconds = dict.fromkeys(self.phases, 0.0)
        self._memory = dict.fromkeys(self.phases, 0)
        self._opened = dict.fromkeys(self.phases, 0.0)
        self._step, self._step_start = 0, 0.0
        self._cuda = torch.cuda if self.cuda else None
        self._process = None if self.cuda else _psutil_process()
        self._region = CpuPeak() if not self.cuda and cpu_peak_tracking_exact() else None
        self._events: list = []  # CUDA: a pool of timing events, reused every step
        self._spans: list[tuple[str, int]] = []  # CUDA: (phase, index of its start event) this step
        self._stream: Any = None  # CUDA: the model device's current stream, where the events are recorded

    def memory(self) -> int:
        """Bytes in use now: CUDA allocated memory, or the process RSS on the CPU."""
        if self._cuda is not None:
            return int(self._cuda.memory_allocated(self.device))
        return int(self._process.memory_info().rss)

    def phase(self, name: str) -> _Phase:
        """Context manager timing ``name`` (one of ``phases``) and reading memory after it."""
        return self._contexts[name]

    def start(self, name: str) -> None:
        """Open phase ``name`` (what ``with phase(name)`` does on entry; for callback-style timing)."""
        if self._cuda is not None:
            first = 2 * len(self._spans)
            while len(self._events) < first + 2:  # grows in the first step only
                self._events.append(self._cuda.Event(enable_timing=True))
            self._events[first].record(self._stream)
            self._spans.append((name, first))
        else:
            self._opened[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        """Close phase ``name``: add its time to this step and read memory."""
        if self._cuda is not None:  # phases do not nest: this closes the latest span
            self._events[self._spans[-1][1] + 1].record(self._stream)
        else:
            self._seconds[name] += time.perf_counter() - self._opened[name]
        self._memory[name] = self.memory()

    def begin_step(self, step: int) -> None:
        """Start step ``step``: zero its phase times (and reset the CUDA peak counter)."""
        for name in self.phases:
            self._seconds[name] = 0.0
            self._memory[name] = 0
        if self._cuda is not None:
            self._spans.clear()
            self._stream = self._cuda.current_stream(self.device)
            self._cuda.reset_peak_memory_stats(self.device)
        elif self._region is not None:
            self._region.reset()
        self._step, self._step_start = step, time.perf_counter()

    def end_step(self) -> dict:
        """Finish the step: its record {step, <phase>_s, mem_after_<phase>, peak_memory, step_s}."""
        if self._cuda is not None:
            self._collect_events()
            peak = int(self._cuda.max_memory_allocated(self.device))
        else:
            peak = max(self._memory.values(), default=0)
            if self._region is not None:
                peak = max(peak, self._region.close())
        step_s = time.perf_counter() - self._step_start
        record: dict = {"step": self._step}
        for name in self.phases:
            record[f"{name}_s"] = self._seconds[name]
            self.totals[name] += self._seconds[name]
        for name in self.phases:
            record[f"mem_after_{name}"] = self._memory[name]
        record["peak_memory"] = peak
        record["step_s"] = step_s
        self.steps += 1
        self.peak_memory = max(self.peak_memory, peak)
        if self._keep:
            self.records.append(record)
        return record

    def _collect_events(self) -> None:
        """Wait for the step's last event (the loop's loss sync has usually done so), then read the spans."""
        if not self._spans:
            return
        self._events[2 * len(self._spans) - 1].synchronize()
        for name, first in self._spans:
            self._seconds[name] += self._events[first].elapsed_time(self._events[first + 1]) / 1000.0

    def means(self) -> dict[str, float]:
        """Mean seconds per step of each phase over the finished steps."""
        return {name: total / max(1, self.steps) for name, total in self.totals.items()}


def _psutil_process() -> Any:
    import psutil

    return psutil.Process()
