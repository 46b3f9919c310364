"""Peak memory of a region: allocator statistics on a GPU, process RSS (sampled) on the CPU."""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["PeakMemory", "current_memory"]


def current_memory(device: Any = None) -> int:
    """Bytes in use now: allocated CUDA memory on a GPU, resident set size of the process on the CPU."""
    import torch

    if device is not None and torch.device(device).type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    import psutil

    return int(psutil.Process().memory_info().rss)


class PeakMemory:
    """Context manager measuring the peak bytes used inside it (``.peak``) and at its start (``.start``).

    On the CPU a background thread samples RSS every ``interval`` seconds; short spikes between samples
    can be missed, so the reported figure is a lower bound on the true peak.
    """

    def __init__(self, device: Any = None, interval: float = 0.005) -> None:
        self.device = device
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def _cuda(self) -> bool:
        import torch

        return self.device is not None and torch.device(self.device).type == "cuda"

    def __enter__(self) -> "PeakMemory":
        import torch

        self.start = current_memory(self.device)
        self.peak = self.start
        if self._cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_memory())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        import torch

        if self._cuda:
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak = max(self.peak, current_memory())
