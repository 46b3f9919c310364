"""An output is never an input of the same command: ``--out`` may not be, hold, or lie inside a file or folder
the command reads (``--card``, ``--from-run``, ``--data``, ``--config``, a local ``--model``). Without this
check ``export --from-run DIR --out DIR --overwrite`` replaced the trained run with its own export."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from layerwise.runtime.errors import ConfigError

__all__ = ["check_apart", "overlap"]


def _real(path: str | os.PathLike) -> Path:
    """``path`` made absolute with every symbolic link of its existing part resolved."""
    return Path(os.path.expanduser(os.fspath(path))).resolve(strict=False)


def overlap(out: str | os.PathLike, source: str | os.PathLike) -> str | None:
    """How ``out`` and ``source`` overlap once symbolic links are resolved: 'is', 'holds' (``out`` is a parent
    folder of ``source``), 'is inside' (``source`` is a parent folder of ``out``), or ``None`` when apart."""
    o, s = _real(out), _real(source)
    if o == s:
        return "is"
    if o in s.parents:
        return "holds"
    if s in o.parents:
        return "is inside"
    return None


def check_apart(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None],
                out_flag: str = "--out") -> None:
    """Raise :class:`ConfigError` naming both flags when ``out`` is, holds or lies inside one of ``inputs``
    (flag -> path; ``None`` and paths that do not exist are skipped: nothing there can be lost)."""
    for flag, source in inputs.items():
        if source is None or str(source).strip() == "" or not os.path.lexists(os.path.expanduser(str(source))):
            continue
        how = overlap(out, source)
        if how is not None:
            raise ConfigError(f"{out_flag} {out} {how} {'the input of ' if how == 'is' else ''}{flag} {source}: an "
                              f"output may not be an input of the same command, nor a folder holding one or inside "
                              f"one (it would be replaced or changed); choose another {out_flag}")
