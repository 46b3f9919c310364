"""Ctrl-C that lands between training steps: the first SIGINT is recorded and acted on at the next step
boundary (where a checkpoint is exact); a second one interrupts at once."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

__all__ = ["DeferredInterrupt"]

log = logging.getLogger(__name__)


class DeferredInterrupt:
    """Context manager; ``requested`` turns True on the first Ctrl-C inside it.

    Only the main thread can own signal handlers: elsewhere this does nothing and Ctrl-C raises as usual.
    A process that ignores SIGINT (started with ``nohup`` or in the background of a script) keeps ignoring it.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> "DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            # None: a handler set outside Python, which we could not restore; SIG_IGN: the user's choice
            if previous is not None and previous is not signal.SIG_IGN:
                self._previous = previous
                signal.signal(signal.SIGINT, self._handle)
                self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step and saving a checkpoint (Ctrl-C again to abort now)")

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
