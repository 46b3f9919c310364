"""Atomic file writes (every file a user may rely on is written to a temporary file, then renamed) and
folder-safe names.

Temporary files and folders are created with mode 0o666 / 0o777 and the kernel applies the user's umask, so a
renamed result has the permissions any new file of the user's gets (``tempfile.mkstemp`` and ``mkdtemp`` make
them 0o600 / 0o700, private to the user whatever the umask says)."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["slug", "atomic_write_text", "atomic_write_json", "atomic_write_with", "prepare_output_dir",
           "temp_file_beside", "temp_dir_beside", "follow_umask", "write_settings", "SETTINGS_NAME", "claim_output",
           "check_writable_dir", "check_free_space", "has_checkpoint", "RUN_MARKERS", "leftover_runs",
           "check_leftovers"]

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


def follow_umask(folder: str | os.PathLike) -> None:
    """Give every file under ``folder`` (made by :func:`temp_dir_beside`, so its mode is 0o777 less the umask)
    the mode a new file of the user's gets: 0o666 less the umask. Writers that make their files private
    (``safetensors`` creates them 0o600) then follow the umask like every other file of a run."""
    folder = Path(folder)
    mode = os.stat(folder).st_mode & 0o666
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, mode)


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
    or a file cannot be created in the nearest existing one (read-only filesystem, no permission). The
    ``ConfigError`` names ``flag`` and the folder at fault."""
    from layerwise.runtime.errors import ConfigError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} exists and is not a directory")
    probe = _nearest_existing(path)
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{flag} {path}: {probe} is a file, so no folder can be made under it")
    if probe.exists():
        try:
            _write_probe(probe)
        except OSError as err:
            raise ConfigError(f"{flag} {path}: cannot write in {probe} ({err.strerror or err}: read-only or no "
                              "permission); choose another folder") from err


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the folder a new ``path`` would be made in)."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def _write_probe(folder: Path) -> None:
    """Create and remove an empty file in ``folder``; raises the ``OSError`` a write there would. A real write,
    not ``os.access``: permission bits do not bind root, and only a write tells a read-only mount for certain."""
    tmp = temp_file_beside(folder / ".layerwise-write-probe")
    os.unlink(tmp)


def check_free_space(folder: str | os.PathLike, need: int, flag: str, what: str) -> None:
    """Refuse, before writing, when the disk of ``folder`` (or of its nearest existing parent) has less than
    ``need`` bytes free: one line naming ``flag``, the folder, ``what`` needs it, the estimate and the free
    space."""
    from layerwise.runtime.errors import ConfigError

    free = shutil.disk_usage(_nearest_existing(Path(folder))).free
    if free < need:
        raise ConfigError(f"{flag} {folder}: {what} needs about {need / 2**20:.1f} MiB but its disk has "
                          f"{free / 2**20:.1f} MiB free; free some space or choose another {flag}")


def has_checkpoint(path: Path) -> bool:
    """Whether a run folder (or one of its sub-runs, as in ``layerwise run``) holds a training checkpoint."""
    if (path / "checkpoint").is_dir():
        return True
    return path.is_dir() and any((child / "checkpoint").is_dir() for child in path.iterdir() if child.is_dir())


@contextlib.contextmanager
def claim_output(path: str | os.PathLike, overwrite: bool = False, *, flag: str = "--out",
                 keep: Callable[[Path], bool] = has_checkpoint) -> Iterator[Path]:
    """The output folder of one command, so that a folder always holds one run.

    The folder is checked writable first, and for a previous run left aside by an ``--overwrite`` that was
    killed (:func:`check_leftovers`). A non-empty folder is refused unless ``overwrite``; with it the old run is
    renamed aside (``.<name>.previous.<random>.tmp`` next to it) rather than mixed with the new files. If the
    body fails before ``keep(path)`` holds (a training checkpoint exists: the new run can be resumed), the new
    files are removed and the old run is put back; a folder this call created is removed, so a failed command
    leaves no empty ``--out``. On success, or once ``keep`` holds, the old run is deleted. Only rank 0 (of a
    ``torchrun`` launch) moves files; the other ranks get the path."""
    path = Path(path)
    if os.environ.get("RANK", "0") not in ("", "0"):
        yield path
        return
    check_writable_dir(path, flag)
    check_leftovers(path, flag)
    existed = path.is_dir()
    aside = _move_aside(path, flag) if existed and any(path.iterdir()) and _may_replace(path, overwrite, flag) \
        else None
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if keep(path):
            _drop(aside, path)
        else:
            _restore(path, aside, existed)
        raise
    _drop(aside, path)


RUN_MARKERS = (SETTINGS_NAME, "card.json", "metrics.json", "report.json", "checkpoint", "selection.json",
               "train_log.jsonl")
"""Files or folders one of which every layerwise output folder holds (``config.yaml`` is written by every
command, ``layerwise export`` included): ``--overwrite`` replaces only such folders."""

_ASIDE = ".previous"
"""The suffix of an old run's name while an ``--overwrite`` keeps it aside: ``.<name>.previous.<random>.tmp``."""
_DISCARDED = ".discarded"
"""The suffix of a folder being deleted on purpose (a replaced old run, a failed new run's files)."""


def _beside(path: Path, suffix: str) -> Path:
    """A free ``.<name><suffix>.<random>.tmp`` name next to ``path`` (not created)."""
    return Path(_create_beside(path.with_name(path.name + suffix), lambda tmp: None))


def leftover_runs(path: str | os.PathLike) -> list[Path]:
    """Old runs of ``path`` still kept aside by an ``--overwrite`` that never finished (killed with SIGKILL, or
    the machine went down): the hidden ``.<name>.previous.<random>.tmp`` folders next to it, oldest first."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    found = path.parent.glob(f".{glob.escape(path.name)}{_ASIDE}.*.tmp")
    return sorted((p for p in found if p.is_dir()), key=lambda p: p.stat().st_mtime)


def check_leftovers(path: str | os.PathLike, flag: str = "--out", *, resume: bool = False) -> None:
    """Deal with what a killed ``--overwrite`` of ``path`` left: the old run kept aside is never deleted here.

    When ``path`` is missing or empty (the new run never wrote a file, or its files were already removed), the
    one old run is put back, with a log line saying so. Otherwise the user decides: a ``ConfigError`` names the
    old run's folder and how to keep one or the other (with ``resume`` only a warning, since resuming
    the new run is the choice). Half-deleted folders a killed cleanup left (``.<name>.discarded.*``) are
    removed."""
    from layerwise.runtime.errors import ConfigError

    path = Path(path)
    for trash in path.parent.glob(f".{glob.escape(path.name)}{_DISCARDED}.*.tmp") if path.parent.is_dir() else ():
        log.info("removing %s, the remains of a deletion that was interrupted", trash)
        shutil.rmtree(trash, ignore_errors=True)
    old = leftover_runs(path)
    if not old:
        return
    empty = not path.exists() or (path.is_dir() and not any(path.iterdir()))
    if empty and len(old) == 1:
        if path.exists():
            path.rmdir()
        os.rename(old[0], path)
        log.warning("%s %s: an earlier --overwrite was killed before it finished and had written nothing; its "
                    "previous run, kept aside in %s, is put back", flag, path, old[0])
        return
    others = f" (and {len(old) - 1} older: {', '.join(str(p) for p in old[1:])})" if len(old) > 1 else ""
    message = (f"{flag} {path}: an earlier --overwrite was killed; its previous run is kept aside in "
               f"{old[-1]}{others}: delete that to keep the new run, or put it in place of {flag} to keep the old one")
    if resume:
        log.warning("%s", message)
        return
    raise ConfigError(message)


def _may_replace(path: Path, overwrite: bool, flag: str) -> bool:
    """Whether the non-empty ``path`` may be moved aside: with ``overwrite``, and only a layerwise output folder
    that neither is nor holds the working directory (a folder of the user's own files is never replaced)."""
    from layerwise.runtime.errors import ConfigError

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
    from layerwise.runtime.errors import ConfigError

    aside = _beside(path, _ASIDE)
    try:
        os.rename(path, aside)
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot move the old run aside to replace it ({err.strerror})") from err
    log.info("--overwrite: the previous run in %s is kept aside in %s until the new run saves its first "
             "checkpoint or ends", path, aside)
    return aside


def _discard(folder: Path, path: Path) -> None:
    """Delete ``folder`` (``path`` or its old run): renamed to ``.<name>.discarded.<random>.tmp`` next to ``path``
    first (one atomic step), so that a kill during the deletion leaves nothing that looks like a run, only
    remains that :func:`check_leftovers` removes."""
    if not folder.exists():
        return
    trash = _beside(path, _DISCARDED)
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _drop(aside: Path | None, path: Path) -> None:
    if aside is not None:
        _discard(aside, path)


def _restore(path: Path, aside: Path | None, existed: bool) -> None:
    """The new run failed with nothing to resume: remove its files and put the previous run back (two renames:
    a kill between them leaves ``path`` missing and the old run aside, which the next command puts back)."""
    _discard(path, path)
    if aside is not None:
        os.rename(aside, path)
        log.warning("the new run failed before its first checkpoint: the previous run in %s is restored", path)
    elif existed:
        path.mkdir(exist_ok=True)  # the user's own empty folder stays as it was


def prepare_output_dir(path: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Path:
    """Create an output directory, refusing to reuse a non-empty one unless ``overwrite`` is set (files are
    replaced in place; :func:`claim_output` is the guarded form the commands use)."""
    from layerwise.runtime.errors import ConfigError

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
