"""Atomic file writes: readers see either the old file or the complete new one, never a part.

The data goes to a temporary file in the target's own directory (so the final rename stays
on one file system), is flushed and fsynced, and then ``os.replace`` swaps it in. If anything
fails the temporary file is removed and the old file, if any, is left untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "TMP_SUFFIX",
    "atomic_text_writer",
    "atomic_write_bytes",
    "atomic_write_text",
    "remove_stale_temporaries",
]

TMP_SUFFIX = ".tmp"
"""Temporary files are named ``.<name>.<writer's PID>-<12 hex digits>.tmp`` beside their target
(``.<name>.<12 hex digits>.tmp`` before the PID was recorded)."""


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    A new file gets the usual permissions (``0o666`` less the umask); an existing file keeps
    its permissions. The parent directory must exist.
    """
    path = Path(path)
    try:
        return _atomic_write(path, data)
    except OSError as error:
        # write/fsync errors (ENOSPC, EIO) carry no path, open errors the temporary file's:
        # name the file the caller asked for
        if error.filename is None or str(error.filename).endswith(TMP_SUFFIX):
            raise type(error)(error.errno, error.strerror or str(error), str(path)) from error
        raise


def _atomic_write(path: Path, data: bytes) -> Path:
    with _replacing(path, "wb") as f:
        f.write(data)
    return path


@contextlib.contextmanager
def _replacing(path: Path, mode: str, **options: Any) -> Iterator[Any]:
    """A new temporary file beside ``path`` opened with ``mode``: flushed, synced and renamed
    over ``path`` when the block ends, removed (``path`` untouched) when it raises."""
    tmp = _temporary(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, 0o666)
    except OSError as error:  # the temporary file's name would say nothing to the caller
        raise type(error)(error.errno, error.strerror or str(error), str(path)) from error
    try:
        with os.fdopen(fd, mode, **options) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _swap_in(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def _temporary(path: Path) -> Path:
    """A new temporary name beside ``path``, holding this process's PID (see :data:`TMP_SUFFIX`)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}{TMP_SUFFIX}")


def _swap_in(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the permissions of the file it replaces (if any), then rename it over it."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_text_writer(path: str | os.PathLike[str], encoding: str = "utf-8") -> Iterator[TextIO]:
    """A text stream (no newline translation) whose content replaces ``path`` atomically when
    the ``with`` block ends without an exception, for files too large to build in memory.

    The text goes to a temporary file beside ``path``; if the block raises, the temporary file
    is removed and ``path`` is left untouched. Permissions as for :func:`atomic_write_bytes`.
    """
    with _replacing(Path(path), "w", encoding=encoding, newline="") as f:
        yield f


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation) and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable where the platform allows it (POSIX); best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that killed writers left in ``folder``; returns the removed
    paths. A temporary whose name records a PID (:data:`TMP_SUFFIX`) of a process still alive
    is kept: a writer that takes no lock (``interfuse explain``, ``predict``, ``report``
    writing beside a training run) may be writing it now. One without a PID (written by an
    older version) is removed, as before."""
    removed = []
    for entry in Path(folder).iterdir():
        stem, _, token = entry.name[: -len(TMP_SUFFIX)].rpartition(".")
        if not (entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX) and stem):
            continue
        writer, dash, digits = token.rpartition("-")
        if len(digits) != 12 or any(c not in "0123456789abcdef" for c in digits):
            continue
        if dash and not (writer.isdecimal() and writer.isascii()):
            continue
        if dash and _alive(int(writer)):
            continue
        if entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    """Whether a process with this PID exists (on this machine; a zombie counts as alive)."""
    if pid <= 0:
        return False  # 0 and negative PIDs would name process groups
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OverflowError:
        return False
    return True
