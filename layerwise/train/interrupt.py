"""Ctrl-C or SIGTERM that lands between training steps: the first SIGINT or SIGTERM is recorded and acted on at
the next step boundary (where a checkpoint is exact); a second one interrupts at once.

SIGTERM is what batch schedulers (Slurm, Kubernetes) and ``timeout`` send before they kill a job: treated like
the first Ctrl-C, the run saves a checkpoint it can ``--resume`` from instead of dying mid-step."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

__all__ = ["DeferredInterrupt", "SIGNALS"]

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals deferred to the next step boundary."""


class DeferredInterrupt:
    """Context manager; ``requested`` turns True on the first Ctrl-C (or SIGTERM) inside it.

    Only the main thread can own signal handlers: elsewhere this does nothing and Ctrl-C raises as usual.
    A process that ignores a signal (started with ``nohup`` or in the background of a script) keeps ignoring it.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                previous = signal.getsignal(sig)
                # None: a handler set outside Python, which we could not restore; SIG_IGN: the user's choice
                if previous is not None and previous is not signal.SIG_IGN:
                    self._previous[sig] = previous
                    signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        log.warning("%s: stopping after this step and saving a checkpoint (Ctrl-C again to abort now)", name)

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
