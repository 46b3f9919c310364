"""Atomic file writes (every file a user may rely on is written to a temporary file, then renamed) and
folder-safe names."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["slug", "atomic_write_text", "atomic_write_json", "atomic_write_with", "prepare_output_dir"]


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
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
