"""Progress without a terminal: a line every --logging-steps (loss, lr, steps/s, ETA) and one per evaluation
when no bar is drawn; none with --logging-steps 0; --report-to tensorboard writes the logged values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layerwise.cli import main
from layerwise.train.reporting import format_eta

TINY = ["train", "--model", "minilm", "--policy", "manual", "--layers", "5", "--steps", "5", "--batch-size", "8",
        "--max-length", "32", "--eval-every", "2", "--eval-max-examples", "16"]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]


def test_a_line_every_logging_steps_and_per_evaluation_without_a_terminal(tmp_path: Path, capsys,
                                                                         monkeypatch) -> None:
    monkeypatch.setenv("LAYERWISE_PROGRESS", "0")  # as under nohup or Slurm: no bars
    assert main([*TINY, "--logging-steps", "2", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err.splitlines()
    lines = [line for line in err if line.startswith("layerwise train: step ")]
    steps = [r for r in _log(tmp_path / "a") if "loss" in r and "eval" not in r]
    logged = [line for line in lines if "steps/s" in line]
    assert [line.split(":")[1].strip() for line in logged] == ["step 2/5", "step 4/5", "step 5/5"]  # and the last
    for line in logged:
        n = int(line.split("step ")[1].split("/")[0])
        record = steps[n - 1]
        assert f"loss {record['loss']:.4f}, lr {record['lr']:.2e}, " in line and "ETA " in line
    evals = [r for r in _log(tmp_path / "a") if "eval" in r]
    shown = [line for line in lines if " dev accuracy " in line]
    assert len(shown) == len(evals) == 3  # steps 2 and 4 and the final one
    assert all(f"accuracy {r['eval']['accuracy']:.4f}" in line for r, line in zip(evals, shown))
    assert sum("evaluating on 16 dev examples" in line for line in lines) == 3
    assert main([*TINY, "--logging-steps", "0", "--out", str(tmp_path / "b")]) == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("layerwise train: step ")]


def test_format_eta() -> None:
    assert [format_eta(s) for s in (0.4, 12, 245, 3725)] == ["0s", "12s", "4m05s", "1h02m"]


def test_report_to_tensorboard_writes_the_logged_values(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra (scripts/setup.sh installs it)")
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("LAYERWISE_PROGRESS", "0")
    out = tmp_path / "tb"
    assert main([*TINY, "--report-to", "tensorboard", "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    steps = [r for r in _log(out) if "loss" in r and "eval" not in r]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    assert [e.value for e in loss] == [float(np.float32(r["loss"])) for r in steps]  # float32 in the event file
    assert [e.value for e in events.Scalars("train/lr")] == [float(np.float32(r["lr"])) for r in steps]
    evals = [r for r in _log(out) if "eval" in r]
    accuracy = events.Scalars("dev/accuracy")
    assert [(e.step, e.value) for e in accuracy] == [(r["step"], float(np.float32(r["eval"]["accuracy"])))
                                                     for r in evals]
