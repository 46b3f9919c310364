"""Atomic file writes (every file a user may rely on is written to a temporary file, then renamed) and
folder-safe names.

Temporary files and folders are created with mode 0o666 / 0o777 and the kernel applies the user's umask, so a
renamed result has the permissions any new file of the user's gets (``tempfile.mkstemp`` and ``mkdtemp`` make
them 0o600 / 0o700, private to the user whatever the umask says)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["slug", "atomic_write_text", "atomic_write_json", "atomic_write_with", "prepare_output_dir",
           "temp_file_beside", "temp_dir_beside", "write_settings", "SETTINGS_NAME", "claim_output",
           "check_writable_dir", "has_checkpoint", "RUN_MARKERS"]

log = logging.getLogger(__name__)

SETTINGS_NAME = "config.yaml"
"""The resolved settings a run writes into its output folder (``--config`` it to run again)."""


def _create_beside(path: Path, create: Callable[[str], None]) -> str:
    """A new, uniquely named ``.<name>.<random>.tmp`` entry next to ``path``, made by ``create(name)``."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            create(tmp)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name next to {path}")


def temp_file_beside(path: str | os.PathLike) -> str:
    """An empty temporary file in ``path``'s folder (created), readable as the user's umask allows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _create_beside(path, lambda tmp: os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))


def temp_dir_beside(path: str | os.PathLike) -> Path:
    """An empty temporary folder in ``path``'s folder (created), with the permissions of the user's umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(_create_beside(path, lambda tmp: os.mkdir(tmp, 0o777)))


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically rename the temporary file onto ``path``."""
    path = Path(path)
    tmp = temp_file_beside(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write_with(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (NaN is refused: it is not JSON)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def check_writable_dir(path: str | os.PathLike, flag: str) -> None:
    """Refuse, before any work starts, a folder that cannot be made or written: one of its parents is a file,
    or the nearest existing one is read-only. The ``ConfigError`` names ``flag`` and the folder at fault."""
    from layerwise.errors import ConfigError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} exists and is not a directory")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{flag} {path}: {probe} is a file, so no folder can be made under it")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write in {probe} (read-only or no permission)")


def has_checkpoint(path: Path) -> bool:
    """Whether a run folder (or one of its sub-runs, as in ``layerwise run``) holds a training checkpoint."""
    if (path / "checkpoint").is_dir():
        return True
    return path.is_dir() and any((child / "checkpoint").is_dir() for child in path.iterdir() if child.is_dir())


@contextlib.contextmanager
def claim_output(path: str | os.PathLike, overwrite: bool = False, *, flag: str = "--out",
                 keep: Callable[[Path], bool] = has_checkpoint) -> Iterator[Path]:
    """The output folder of one command, so that a folder always holds one run.

    The folder is checked writable first. A non-empty folder is refused unless ``overwrite``; with it the old
    run is renamed aside (``.<name>.previous-<random>`` next to it) rather than mixed with the new files. If the
    body fails before ``keep(path)`` holds (a training checkpoint exists: the new run can be resumed), the new
    files are removed and the old run is put back; a folder this call created is removed, so a failed command
    leaves no empty ``--out``. On success, or once ``keep`` holds, the old run is deleted. Only rank 0 (of a
    ``torchrun`` launch) moves files; the other ranks get the path."""
    path = Path(path)
    if os.environ.get("RANK", "0") not in ("", "0"):
        yield path
        return
    check_writable_dir(path, flag)
    existed = path.is_dir()
    aside = _move_aside(path, flag) if existed and any(path.iterdir()) and _may_replace(path, overwrite, flag) \
        else None
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if keep(path):
            _drop(aside)
        else:
            _restore(path, aside, existed)
        raise
    _drop(aside)


RUN_MARKERS = (SETTINGS_NAME, "card.json", "metrics.json", "report.json", "checkpoint", "selection.json",
               "train_log.jsonl")
"""Files or folders one of which every layerwise output folder holds: ``--overwrite`` replaces only such folders."""


def _may_replace(path: Path, overwrite: bool, flag: str) -> bool:
    """Whether the non-empty ``path`` may be moved aside: with ``overwrite``, and only a layerwise output folder
    that neither is nor holds the working directory (a folder of the user's own files is never replaced)."""
    from layerwise.errors import ConfigError

    if not overwrite:
        raise ConfigError(f"{flag} {path} already exists and is not empty; pass --overwrite to replace its files "
                          "(or --resume where the command supports it)")
    cwd, resolved = Path.cwd().resolve(), path.resolve()
    if cwd == resolved or resolved in cwd.parents:
        raise ConfigError(f"{flag} {path} holds the current directory; --overwrite replaces a whole run folder, "
                          "so choose a folder of its own")
    if not any((path / name).exists() for name in RUN_MARKERS):
        raise ConfigError(f"{flag} {path} is not a layerwise output folder (none of {', '.join(RUN_MARKERS)}); "
                          "--overwrite replaces only those: choose a new or empty folder")
    return True


def _move_aside(path: Path, flag: str) -> Path:
    from layerwise.errors import ConfigError

    aside = Path(_create_beside(path.with_name(path.name + ".previous"), lambda tmp: None))
    try:
        os.rename(path, aside)
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot move the old run aside to replace it ({err.strerror})") from err
    log.info("--overwrite: the previous run in %s is kept aside in %s until the new run saves its first "
             "checkpoint or ends", path, aside)
    return aside


def _drop(aside: Path | None) -> None:
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _restore(path: Path, aside: Path | None, existed: bool) -> None:
    """The new run failed with nothing to resume: remove its files and put the previous run back."""
    shutil.rmtree(path, ignore_errors=True)
    if aside is not None:
        os.rename(aside, path)
        log.warning("the new run failed before its first checkpoint: the previous run in %s is restored", path)
    elif existed:
        path.mkdir(exist_ok=True)  # the user's own empty folder stays as it was


def prepare_output_dir(path: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Path:
    """Create an output directory, refusing to reuse a non-empty one unless ``overwrite`` is set (files are
    replaced in place; :func:`claim_output` is the guarded form the commands use)."""
    from layerwise.errors import ConfigError

    path = Path(path)
    check_writable_dir(path, flag)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ConfigError(
            f"{flag} {path} already exists and is not empty; pass --overwrite to replace its files "
            "(or --resume where the command supports it)"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def slug(text: str) -> str:
    """A folder-name-safe version of a model or task name (its last path part)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip("/").split("/")[-1]).strip("-") or "model"


def write_settings(out_dir: str | os.PathLike, settings: Any) -> Path | None:
    """Write ``settings`` (a mapping of flag names to values) as ``out_dir/config.yaml``, atomically; None
    writes nothing."""
    if settings is None:
        return None
    import yaml

    header = "# layerwise settings of this run; `--config` this file to run it again (flags given win)\n"
    return atomic_write_text(Path(out_dir) / SETTINGS_NAME, header + yaml.safe_dump(dict(settings), sort_keys=False))
