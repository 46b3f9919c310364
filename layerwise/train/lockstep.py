"""Training runs in lockstep: several ``train()`` calls take turns, one optimizer step each, in one process.

Timing two runs one after the other lets a drift in machine speed (another tenant, thermal state, the page
cache) fall on one run and not the other; on a shared 2-core machine that drift was as large as the effect
measured (a uniform-LoRA run took 71 s in one session and 93 s in another). In lockstep both runs see the
same machine, step by step. Only one run computes at a time, and a run's step time excludes its waits, so
each run's ``train_seconds`` and phase totals mean what they mean in a run alone.

Each run keeps its own random state: at a hand-over the torch (CPU and CUDA), Python and NumPy generators
are saved and, when the turn comes back, restored, so a run's dropout masks, and so its weights, equal
those of the same run trained alone.

    runs = Lockstep(2)
    results = runs.run([lambda cb: train_job(..., callbacks=[cb]), lambda cb: train_job(..., callbacks=[cb])])
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

from layerwise.train.checkpoint import set_torch_rng_states, torch_rng_states
from layerwise.train.interrupt import DeferredInterrupt

__all__ = ["Lockstep", "RandomState"]


class RandomState:
    """A snapshot of every generator a training step draws from (torch CPU and CUDA, Python, NumPy)."""

    def __init__(self) -> None:
        import numpy as np

        self.torch = torch_rng_states()  # the checkpoint's capture: CUDA only once it is in use
        self.python = random.getstate()
        self.numpy = np.random.get_state()

    def restore(self) -> None:
        """Put every generator back to this snapshot."""
        import numpy as np

        set_torch_rng_states(self.torch)
        random.setstate(self.python)
        np.random.set_state(self.numpy)


class _Turn:
    """The callback one run gets: at the end of each step it hands the turn to the next live run."""

    def __init__(self, group: "Lockstep", index: int) -> None:
        self.group, self.index = group, index

    def on_step_end(self, state: Any) -> None:
        saved = RandomState()
        self.group._pass(self.index)
        self.group._wait(self.index)
        saved.restore()
        if self.group.interrupt is not None and self.group.interrupt.requested:
            raise KeyboardInterrupt  # at this run's step boundary: train() saves an exact checkpoint


class Lockstep:
    """Run ``n`` jobs in threads that take turns at optimizer-step boundaries (round robin)."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"Lockstep needs at least one run, got {n}")
        self.n = n
        self._cond = threading.Condition()
        self._turn = 0
        self._live = [True] * n
        self.interrupt: DeferredInterrupt | None = None

    def run(self, jobs: Sequence[Callable[[Any], Any]]) -> list[Any]:
        """Call each ``job(callback)`` in its own thread, in turns; return their results in order.

        A job must pass ``callback`` to its training loop (``train(..., callbacks=[callback])``). Setup
        before the first step and the work after the last one happen within the job's turn. The first
        failed job's exception (in job order) is re-raised here after every job has ended.

        Ctrl-C (in the main thread) stops every run at its next step boundary, where ``train()`` saves an exact
        checkpoint, then ``KeyboardInterrupt`` is raised here; a second Ctrl-C aborts at once.
        """
        if len(jobs) != self.n:
            raise ValueError(f"Lockstep({self.n}) got {len(jobs)} jobs")
        results: list[Any] = [None] * self.n
        errors: list[BaseException | None] = [None] * self.n

        def body(i: int) -> None:
            try:
                self._wait(i)
                results[i] = jobs[i](_Turn(self, i))
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                errors[i] = err
            finally:
                with self._cond:
                    self._live[i] = False
                self._pass(i)

        threads = [threading.Thread(target=body, args=(i,), name=f"lockstep-{i}", daemon=True)
                   for i in range(self.n)]
        with DeferredInterrupt() as self.interrupt:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        self.interrupt = None
        for err in errors:
            if err is not None:
                raise err
        return results

    def _wait(self, i: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._turn == i)

    def _pass(self, i: int) -> None:
        """Give the turn to the next live run after ``i`` (keep it when ``i`` is the only one left)."""
        with self._cond:
            for k in range(1, self.n + 1):
                nxt = (i + k) % self.n
                if self._live[nxt]:
                    self._turn = nxt
                    break
            self._cond.notify_all()
