"""Lockstep training: runs take turns step by step, and each one ends with the weights it has when trained alone."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import peft
import pytest
import torch
from safetensors.torch import load_file

from layerwise.data import load_task
from layerwise.train import TrainConfig, train
from layerwise.train.lockstep import Lockstep, RandomState

from tiny_models import tiny_bert

pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def setup(tokenizer):
    data = load_task("rotten-tomatoes")
    rng = random.Random(0)
    return tokenizer, data.task, rng.sample(data.train, 96), rng.sample(data.dev, 32)


class Record:
    """Callback: note (run, step) at every step end, in the order the steps happened."""

    def __init__(self, name: str, seen: list) -> None:
        self.name, self.seen = name, seen

    def on_step_end(self, state) -> None:
        self.seen.append((self.name, state.step))


def train_one(setup, out, seed: int, steps: int, callbacks=(), resume: bool = False):
    """A tiny BERT with LoRA (dropout on, so the random state matters) trained for ``steps``."""
    tok, task, train_ex, dev_ex = setup
    model = peft.get_peft_model(tiny_bert(tok.vocab_size, seed=seed),
                                peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.1,
                                                target_modules=["query", "value"]))
    cfg = TrainConfig(steps=steps, lr=5e-3, batch_size=8, max_length=48, eval_every=0, seed=seed)
    return train(model, tok, task, train_ex, dev_ex, cfg, out, show_progress=False, callbacks=list(callbacks),
                 resume=resume)


def tensors(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.adapter_dir / "adapter_model.safetensors"))


def test_runs_alternate_and_match_their_solo_runs(setup, tmp_path):
    seen: list = []
    jobs = [lambda turn: train_one(setup, tmp_path / "a", 0, 4, [Record("a", seen), turn]),
            lambda turn: train_one(setup, tmp_path / "b", 1, 6, [Record("b", seen), turn])]
    together = Lockstep(2).run(jobs)
    # One step of each in turn; the longer run goes on alone.
    assert seen == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3), ("a", 4), ("b", 4), ("b", 5),
                    ("b", 6)]
    alone = [train_one(setup, tmp_path / "a-alone", 0, 4), train_one(setup, tmp_path / "b-alone", 1, 6)]
    for mixed, solo in zip(together, alone):
        t_mixed, t_solo = tensors(mixed), tensors(solo)
        assert t_mixed.keys() == t_solo.keys() and t_mixed
        for name in t_mixed:
            assert torch.equal(t_mixed[name], t_solo[name]), name
        assert mixed.final_metrics == solo.final_metrics


class SkewedClock:
    """``time`` for the phase timer: the real clock plus the seconds that :class:`Pause` pretends to wait."""

    def __init__(self) -> None:
        self.skew = 0.0

    def perf_counter(self) -> float:
        return time.perf_counter() + self.skew


class Pause:
    """Callback: at every step end (in this run's turn, outside its steps) the phase timer's clock jumps 1000 s."""

    def __init__(self, clock: SkewedClock) -> None:
        self.clock = clock

    def on_step_end(self, state) -> None:
        self.clock.skew += 1000.0


def test_a_run_s_step_time_excludes_the_other_run_s_turns(setup, tmp_path, monkeypatch):
    import layerwise.train.phases as phases

    clock = SkewedClock()
    monkeypatch.setattr(phases, "time", clock)
    quick, slow = Lockstep(2).run([lambda turn: train_one(setup, tmp_path / "q", 0, 4, [turn]),
                                   lambda turn: train_one(setup, tmp_path / "s", 1, 4, [Pause(clock), turn])])
    assert clock.skew == 4000.0
    # Counting the other run's turns (or its own pauses) would add at least 1000 s to a run's training time;
    # four real tiny steps take well under 500 s even on a loaded machine.
    assert 0 < quick.train_seconds < 500 and 0 < slow.train_seconds < 500


def test_an_error_in_one_run_is_raised_after_the_others_finish(setup, tmp_path):
    finished = []

    def failing(turn):
        raise ValueError("bad job")

    def fine(turn):
        result = train_one(setup, tmp_path / "ok", 0, 2, [turn])
        finished.append(result.steps)
        return result

    with pytest.raises(ValueError, match="bad job"):
        Lockstep(2).run([failing, fine])
    assert finished == [2]
    with pytest.raises(ValueError, match="got 1 jobs"):
        Lockstep(2).run([fine])


def test_random_state_snapshot_restores_every_generator():
    import numpy as np

    snap = RandomState()
    first = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123), random.seed(5), np.random.seed(7)
    snap.restore()
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]


class CtrlC:
    """Callback: a real SIGINT to this process after ``step``; waits until the main thread has handled it."""

    def __init__(self, step: int, group: Lockstep) -> None:
        self.step, self.group = step, group

    def on_step_end(self, state) -> None:
        if state.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)
            while not self.group.interrupt.requested:
                time.sleep(0.01)


def test_ctrl_c_stops_every_run_at_a_step_boundary_with_a_checkpoint(setup, tmp_path):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in an interactive Python
    try:
        group = Lockstep(2)
        with pytest.raises(KeyboardInterrupt):
            group.run([lambda turn: train_one(setup, tmp_path / "a", 0, 6, [CtrlC(2, group), turn]),
                       lambda turn: train_one(setup, tmp_path / "b", 1, 6, [turn])])
    finally:
        signal.signal(signal.SIGINT, previous)
    # a stops after its step 2; b, which was waiting at the end of its step 1, stops there.
    steps = {name: json.loads((tmp_path / name / "checkpoint" / "state.json").read_text())["state"]["step"]
             for name in ("a", "b")}
    assert steps == {"a": 2, "b": 1}
    # The checkpoint is exact: b resumed alone ends with the weights of b trained alone.
    resumed = train_one(setup, tmp_path / "b", 1, 6, resume=True)
    solo = train_one(setup, tmp_path / "b-alone", 1, 6)
    for name, tensor in tensors(solo).items():
        assert torch.equal(tensors(resumed)[name], tensor), name
