"""`claim_output` (issue 19, class 4): a folder always holds one run. In-process and fast; the CLI side is in
test_reliability.py."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from layerwise.errors import ConfigError
from layerwise.io import claim_output


def old_run(path: Path) -> Path:
    (path / "checkpoint").mkdir(parents=True)
    (path / "metrics.json").write_text("old")
    (path / "checkpoint" / "state.json").write_text("old state")
    return path


def files(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_non_empty_folder_needs_overwrite(tmp_path: Path) -> None:
    run = old_run(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"--out .*run already exists and is not empty; pass --overwrite"):
        with claim_output(run):
            pass
    assert files(run) == {"metrics.json": "old", "checkpoint/state.json": "old state"}


def test_failure_before_the_first_checkpoint_restores_the_old_run(tmp_path: Path) -> None:
    run = old_run(tmp_path / "run")
    with pytest.raises(RuntimeError):
        with claim_output(run, overwrite=True) as out:
            assert list(out.iterdir()) == []  # the new run starts in an empty folder, never mixed
            (out / "config.yaml").write_text("new")
            raise RuntimeError("fails while loading")
    assert files(run) == {"metrics.json": "old", "checkpoint/state.json": "old state"}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # nothing left aside


def test_interrupt_after_the_first_checkpoint_keeps_the_new_run_only(tmp_path: Path) -> None:
    run = old_run(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        with claim_output(run, overwrite=True) as out:
            (out / "checkpoint").mkdir()
            (out / "checkpoint" / "state.json").write_text("new state")
            raise KeyboardInterrupt
    assert files(run) == {"checkpoint/state.json": "new state"}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_success_replaces_the_old_run(tmp_path: Path) -> None:
    run = old_run(tmp_path / "run")
    with claim_output(run, overwrite=True) as out:
        (out / "metrics.json").write_text("new")
    assert files(run) == {"metrics.json": "new"} and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_failed_command_leaves_no_new_folder_and_keeps_the_users_empty_one(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with claim_output(tmp_path / "a" / "new") as out:
            (out / "config.yaml").write_text("x")
            raise RuntimeError
    assert not (tmp_path / "a" / "new").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(RuntimeError):
        with claim_output(tmp_path / "mine"):
            raise RuntimeError
    assert (tmp_path / "mine").is_dir() and list((tmp_path / "mine").iterdir()) == []


def test_out_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("mine")
    with pytest.raises(ConfigError, match=r"--out .*f/x/y: .*f is a file, so no folder can be made under it"):
        with claim_output(tmp_path / "f" / "x" / "y"):
            pass
    assert (tmp_path / "f").read_text() == "mine"


def test_sigterm_is_deferred_like_the_first_ctrl_c() -> None:
    import os

    from layerwise.train.interrupt import DeferredInterrupt

    before = signal.getsignal(signal.SIGTERM)
    with DeferredInterrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.requested  # recorded, not fatal: the loop saves a checkpoint at the step boundary
        with pytest.raises(KeyboardInterrupt):  # a second signal interrupts at once
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before


def test_overwrite_never_replaces_a_folder_of_the_users_own_files(tmp_path: Path, monkeypatch) -> None:
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match=r"--out .*project is not a layerwise output folder"):
        with claim_output(mine, overwrite=True):
            pass
    run = old_run(tmp_path / "run")
    monkeypatch.chdir(run)
    with pytest.raises(ConfigError, match=r"--out .*run holds the current directory"):
        with claim_output(run, overwrite=True):
            pass
    assert files(mine) == {"thesis.tex": "years of work"} and files(run)["metrics.json"] == "old"
