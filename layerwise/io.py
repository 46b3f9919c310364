"""Atomic file writes (every file a user may rely on is written to a temporary file, then renamed) and
folder-safe names.

Temporary files and folders are created with mode 0o666 / 0o777 and the kernel applies the user's umask, so a
renamed result has the permissions any new file of the user's gets (``tempfile.mkstemp`` and ``mkdtemp`` make
them 0o600 / 0o700, private to the user whatever the umask says)."""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable

__all__ = ["slug", "atomic_write_text", "atomic_write_json", "atomic_write_with", "prepare_output_dir",
           "temp_file_beside", "temp_dir_beside", "write_settings", "SETTINGS_NAME"]

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


def prepare_output_dir(path: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Path:
    """Create an output directory, refusing to reuse a non-empty one unless ``overwrite`` is set."""
    from layerwise.errors import ConfigError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} exists and is not a directory")
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
