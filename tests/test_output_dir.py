"""`claim_output` (issue 19, class 4): a folder always holds one run. In-process and fast; the CLI side is in
test_reliability.py."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from layerwise.runtime.errors import ConfigError
from layerwise.runtime.io import claim_output


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


# ---------------------------------------------------------------- what a killed --overwrite leaves (SIGKILL)


def left_aside(run: Path, tag: str = "0123abcd") -> Path:
    """The state a SIGKILL during `--overwrite` leaves: the old run renamed to its hidden `.previous` name."""
    aside = run.with_name(f".{run.name}.previous.{tag}.tmp")
    run.rename(aside)
    return aside


@pytest.mark.parametrize("new_folder", ["missing", "empty"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_killed_overwrite_that_wrote_nothing_gets_its_old_run_back(tmp_path: Path, caplog, new_folder: str,
                                                                    overwrite: bool) -> None:
    run = old_run(tmp_path / "run")
    aside = left_aside(run)
    if new_folder == "empty":
        run.mkdir()
    with caplog.at_level("WARNING", logger="layerwise"):
        if overwrite:  # the command goes on: the old run is moved aside again, as a fresh --overwrite does
            with pytest.raises(RuntimeError), claim_output(run, overwrite=True) as out:
                assert list(out.iterdir()) == []
                raise RuntimeError("the new run fails")
        else:  # put back, and then the folder is a non-empty one like any other
            with pytest.raises(ConfigError, match="already exists and is not empty"), claim_output(run):
                pass
    assert f"its previous run, kept aside in {aside}, is put back" in caplog.text
    assert files(run) == {"metrics.json": "old", "checkpoint/state.json": "old state"}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_killed_overwrite_with_new_files_is_named_and_nothing_is_moved_or_deleted(tmp_path: Path,
                                                                                   caplog) -> None:
    from layerwise.runtime.io import check_leftovers

    run = old_run(tmp_path / "run")
    aside = left_aside(run)
    (run / "checkpoint").mkdir(parents=True)  # the new run got as far as a checkpoint before the SIGKILL
    (run / "checkpoint" / "state.json").write_text("new state")
    for overwrite in (False, True):
        with pytest.raises(ConfigError) as err, claim_output(run, overwrite=overwrite):
            pass
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"--out {run}: an earlier --overwrite was killed")
        assert message.endswith(f"kept aside in {aside}: delete that to keep the new run, or put it in place of "
                                "--out to keep the old one")
    with caplog.at_level("WARNING", logger="layerwise"):
        check_leftovers(run, "--out", resume=True)  # --resume of the new run: a warning naming the old one, no error
    assert f"kept aside in {aside}" in caplog.text
    assert files(run) == {"checkpoint/state.json": "new state"}
    assert files(aside) == {"metrics.json": "old", "checkpoint/state.json": "old state"}


def test_two_leftovers_are_never_guessed_between(tmp_path: Path) -> None:
    first = left_aside(old_run(tmp_path / "run"))
    left_aside(old_run(tmp_path / "run"), "99999999")
    with pytest.raises(ConfigError, match=r"and 1 older"), claim_output(tmp_path / "run"):
        pass
    assert not (tmp_path / "run").exists() and files(first)["metrics.json"] == "old"


def test_remains_of_a_killed_deletion_are_removed_and_deletions_go_through_a_discarded_name(
        tmp_path: Path, monkeypatch) -> None:
    import shutil

    trash = tmp_path / ".run.discarded.0123abcd.tmp"
    (trash / "checkpoint").mkdir(parents=True)  # half deleted when the process was killed
    run = old_run(tmp_path / "run")
    removed = []
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", lambda p, **kw: (removed.append(Path(p).name), real_rmtree(p, **kw)))
    with claim_output(run, overwrite=True) as out:
        (out / "metrics.json").write_text("new")
    assert files(run) == {"metrics.json": "new"} and [p.name for p in tmp_path.iterdir()] == ["run"]
    # the old run was renamed to a .discarded name before its deletion began: a kill there leaves no .previous
    assert removed[0] == trash.name and removed[1].startswith(".run.discarded.") and len(removed) == 2


# ---------------------------------------------------------------- read-only folders, disk space


def test_a_folder_that_refuses_writes_is_refused_up_front(tmp_path: Path, monkeypatch) -> None:
    """The tests run as root, for whom chmod does not deny writes: the write probe is made to fail as a
    read-only mount makes it fail (EROFS)."""
    import errno

    import layerwise.runtime.io as io

    io.check_writable_dir(tmp_path / "new" / "out", "--out")  # the real probe, on a writable disk
    assert list(tmp_path.iterdir()) == []  # it leaves nothing behind

    def read_only(folder: Path) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io, "_write_probe", read_only)
    with pytest.raises(ConfigError, match=rf"--out {tmp_path}/new/out: cannot write in {tmp_path} \(Read-only "
                                          r"file system: read-only or no permission\)"):
        with claim_output(tmp_path / "new" / "out"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_too_little_disk_is_one_line_with_the_folder_the_estimate_and_the_free_space(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    import collections
    import shutil

    from layerwise.runtime.io import check_free_space

    usage = collections.namedtuple("usage", "total used free")
    seen = []
    monkeypatch.setattr(shutil, "disk_usage", lambda p: (seen.append(Path(p)), usage(10 * 2**30, 0, 3 * 2**20))[1])
    check_free_space(tmp_path / "a" / "b", 3 * 2**20, "--out", "the card")  # exactly enough
    with pytest.raises(ConfigError, match=rf"^--out {tmp_path}/a/b: the card needs about 3.5 MiB but its disk has "
                                          r"3.0 MiB free; free some space or choose another --out$"):
        check_free_space(tmp_path / "a" / "b", 3 * 2**20 + 2**19, "--out", "the card")
    assert seen == [tmp_path, tmp_path]  # the nearest folder that exists: where the new one would be made
