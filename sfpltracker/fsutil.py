"""Durable file writes: the one way every writer replaces or appends to a file.

``write_atomic`` replaces a file so that after a crash at any moment the path holds either the
old bytes or the new ones, and once it returns the new ones survive a power cut:

1. a temporary file in the same directory (a rename is atomic only within one file system),
   created exclusively under a fresh name *with its final mode* - a secret is never readable
   by others, not even for the moment between writing and a ``chmod``, and a stale temporary
   file left by a crash (whatever its mode) is never reused;
2. the data written and the file fsynced (else the rename can reach the disk before the data,
   and a power cut leaves an empty file under the old name);
3. renamed over the path;
4. the directory fsynced (else the rename itself can be lost).

``create_atomic`` is ``write_atomic`` that never replaces: the first of several processes
creating one file wins and the others read its bytes. ``append_durably`` appends and fsyncs (and fsyncs the directory when it created the file);
``fsync_dir`` is step 4 alone, for writers that create files their own way (spool segments).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make the directory's entries (a file created, renamed or deleted) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _synced_temp(directory: Path, name: str, data: bytes, mode: int) -> Path:
    """A new file beside ``name`` (a fresh name, created exclusively with ``mode``) holding
    ``data``, fsynced. Removed again if writing fails."""
    tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def write_atomic(
    path: str | os.PathLike,
    data: bytes | str,
    mode: int = 0o644,
    *,
    tmp_dir: str | os.PathLike | None = None,
) -> None:
    """Replace ``path`` by ``data`` atomically and durably; the file gets ``mode`` (less the
    umask) from its creation on. ``tmp_dir`` (same file system) holds the temporary file
    when the target directory must not see it (ClickHouse reads every file of a log dir)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    tmp = _synced_temp(Path(tmp_dir or path.parent), path.name, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def create_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> bool:
    """Create ``path`` holding ``data`` unless it exists (False then: someone else's bytes are
    there, complete). Atomic like ``write_atomic``: a hard link of a synced temporary file
    fails when the name is taken, where a rename would replace it."""
    path = Path(path)
    tmp = _synced_temp(path.parent, path.name, data, mode)
    try:
        try:
            os.link(tmp, path)
            created = True
        except FileExistsError:
            created = False
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(path.parent)
    return created


def append_durably(path: str | os.PathLike, data: bytes, mode: int = 0o600) -> None:
    """Append ``data`` to ``path`` (created with ``mode`` if missing) and fsync it."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_EXCL, mode)
        created = True
    except FileExistsError:
        fd = os.open(path, flags, mode)
        created = False
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)
