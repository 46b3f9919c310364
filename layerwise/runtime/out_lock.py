"""One process at a time on an output folder: an advisory lock (``fcntl.flock``) on ``.<name>.lock`` next to
``--out``, held while the command writes there. A second command on the same ``--out`` (a run and a
concurrent ``--resume`` of it) is refused, naming the folder and the process id that holds it. The lock file
is removed when the holder is done; the lock is the kernel's, so a killed holder leaves no stale lock."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from layerwise.runtime.errors import ConfigError

__all__ = ["lock_path", "hold_out_lock"]


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of the output folder ``out``: ``.<name>.lock`` beside it (symbolic links resolved)."""
    real = Path(os.path.expanduser(os.fspath(out))).resolve(strict=False)
    return real.parent / f".{real.name}.lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


@contextlib.contextmanager
def hold_out_lock(out: str | os.PathLike, flag: str = "--out") -> Iterator[Path]:
    """Hold the lock of ``out`` for the ``with`` block; :class:`ConfigError` if another process holds it.

    Only the main process of a distributed launch (``RANK`` 0 or unset) takes it: the ranks of one run share
    their ``--out``. Parent folders created for the lock file are removed again if they are left empty."""
    import fcntl

    if os.environ.get("RANK", "0") not in ("", "0"):
        yield lock_path(out)
        return
    path = lock_path(out)
    if path.name == "..lock":  # --out / : refused by the command's own checks; nothing beside it to lock
        yield path
        return
    created = []
    probe = path.parent
    while not probe.exists() and probe.parent != probe:
        created.append(probe)
        probe = probe.parent
    fd = -1
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:  # a file in the way, a read-only disk: the command's own checks name it
            yield path
            return
        while True:  # the holder unlinks the file when done: lock the file that is still at the path
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError:
                yield path
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                fd = -1
                raise ConfigError(f"{flag} {out} is in use by another layerwise process (pid {_holder(path)}); wait "
                                  f"for it to finish or choose another {flag}") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
            fd = -1
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
