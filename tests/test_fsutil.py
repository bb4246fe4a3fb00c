"""Every file the gateway replaces or appends to goes through ``sfpltracker.fsutil``: each writer
here is checked for the three promises of ``write_atomic``, on a real file system:

- a secret is never readable by others: the kernel's own record of what happened to the files
  (inotify) shows no mode change after data was written, and the final mode is owner-only even
  when a crash left a world-readable temporary file behind;
- a crash between writing and renaming leaves the old file as it was;
- the new bytes are fsynced before the rename and the directory after it (the only check that
  needs a spy: a directory fsync leaves no trace a test can read, short of cutting the power).
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from sfpltracker import fsutil
from sfpltracker.cli.privacy import _write_atomically
from sfpltracker.edge.tls.certs import write_private
from sfpltracker.gateway import load_or_create_secret
from sfpltracker.pipeline.journal import InsertJournal, JournalBatch, encode_record
from sfpltracker.pipeline.spool import COMMITTED_FILE, Position, save_committed
from sfpltracker.privacy.identity import DailySalts
from sfpltracker.store.deadletter import DeadLetters
from sfpltracker.store.embedded.dedup_logs import _replace
from sfpltracker.store.embedded.store import write_chdb_config

# -- the writers --------------------------------------------------------------------------------


@dataclass
class Writer:
    name: str
    target: str  # the file written, relative to the test's directory
    mode: int | None  # the mode it must have (None: not a secret, any mode)
    write: object  # (directory) -> None: writes ``target`` anew

    def path(self, base: Path) -> Path:
        return base / self.target


def _journal(base: Path) -> None:
    # A journal whose batches are all settled is rewritten (empty) when it is opened.
    InsertJournal(base).open()


def _deadletter_replace(base: Path) -> None:
    letters = DeadLetters(base)
    head = len(letters.snapshot("events"))
    letters.replace_head("events", head, [b'{"row": "kept"}\n'])


WRITERS = [
    Writer("secret.key", "secret.key", 0o600, lambda d: load_or_create_secret(d / "secret.key")),
    Writer("TLS key", "a.key", 0o600, lambda d: write_private(d / "a.key", b"KEY")),
    Writer("cookieless salt", "2026-01-02", 0o600, lambda d: DailySalts(d, b"").salt("2026-01-02")),
    Writer("privacy export", "out.parquet", 0o600, lambda d: _write_atomically(d / "out.parquet", b"P")),
    Writer("dead letters replayed", "events.jsonl", 0o600, _deadletter_replace),
    Writer("spool position", COMMITTED_FILE, None, lambda d: save_committed(d, Position(3, 4))),
    Writer("insert journal", InsertJournal.FILE, None, _journal),
    Writer("dedup log repair", "log.txt", None, lambda d: _replace(d / "log.txt", b"L", d)),
    Writer("chDB config", "chdb-config.xml", None, lambda d: write_chdb_config(d / "chdb-config.xml")),
]  # fmt: skip

# What each target held before (the secret and the salt are only written when missing or torn).
OLD = {
    InsertJournal.FILE: encode_record(
        JournalBatch("t", "events", Position(1, 0), Position(1, 9)).to_record()
    )
    + encode_record({"op": "end", "token": "t"}),
    "2026-01-02": b"torn",
}
REWRITES_EXISTING = {w.name for w in WRITERS} - {
    "secret.key"
}  # a kept secret is read, not replaced


def ids(writers):
    return [w.name for w in writers]


# -- inotify: the kernel's account of what was done to the files of a directory ------------------

IN_MODIFY, IN_ATTRIB, IN_CREATE = 0x2, 0x4, 0x100
_EVENT = struct.Struct("iIII")


class DirectoryEvents:
    """inotify on one directory (Linux): ``events()`` -> [(mask, name)] since the last call."""

    def __init__(self, directory: Path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        wd = self.libc.inotify_add_watch(
            self.fd, str(directory).encode(), IN_MODIFY | IN_ATTRIB | IN_CREATE
        )
        assert wd >= 0, os.strerror(ctypes.get_errno())

    def events(self) -> list[tuple[int, str]]:
        out = []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return out
        at = 0
        while at < len(data):
            _wd, mask, _cookie, size = _EVENT.unpack_from(data, at)
            name = data[at + _EVENT.size : at + _EVENT.size + size].rstrip(b"\0").decode()
            out.append((mask, name))
            at += _EVENT.size + size
        return out

    def close(self):
        os.close(self.fd)


SECRETS = [w for w in WRITERS if w.mode is not None]


@pytest.mark.parametrize("writer", SECRETS, ids=ids(SECRETS))
def test_a_secret_never_changes_mode_after_its_data_is_written(tmp_path, writer):
    """Created owner-only, not chmod-ed after the fact: between the write and a chmod another
    user could open the file and keep reading it whatever its mode becomes."""
    if writer.name == "dead letters replayed":
        writer.path(tmp_path).write_bytes(b'{"row": "old"}\n')
        os.chmod(writer.path(tmp_path), 0o600)
    watch = DirectoryEvents(tmp_path)
    try:
        writer.write(tmp_path)
        events = watch.events()
    finally:
        watch.close()
    written: set[str] = set()
    for mask, name in events:
        if mask & IN_MODIFY:
            written.add(name)
        if mask & IN_ATTRIB:
            assert name not in written, f"{name}: mode/attributes changed after data: {events}"
    assert written, f"no data written: {events}"
    assert stat.S_IMODE(writer.path(tmp_path).stat().st_mode) == writer.mode


@pytest.mark.parametrize("writer", SECRETS, ids=ids(SECRETS))
def test_a_stale_world_readable_temp_file_does_not_widen_a_secret(tmp_path, writer):
    """A crash can leave a temporary file behind (or another program made one, wider):
    opening it again keeps *its* mode, so the new secret would be readable by everyone."""
    target = writer.path(tmp_path)
    for stale in (
        target.with_suffix(".tmp"),
        target.with_name(target.name + ".tmp"),
        target.with_name(f".{target.name}.tmp"),
        target.with_name(f".{target.name}.replay"),
    ):
        stale.write_bytes(b"left by a crash")
        os.chmod(stale, 0o644)
    if writer.name == "dead letters replayed":
        target.write_bytes(b'{"row": "old"}\n')
        os.chmod(target, 0o600)
    writer.write(tmp_path)
    assert stat.S_IMODE(target.stat().st_mode) == writer.mode


# -- a crash between the write and the rename -----------------------------------------------------


class Crash(BaseException):
    """The process dies here (nothing after it runs, no except clause catches it)."""


REPLACING = [w for w in WRITERS if w.name in REWRITES_EXISTING]


@pytest.mark.parametrize("writer", REPLACING, ids=ids(REPLACING))
def test_a_crash_before_the_rename_leaves_the_old_file_intact(tmp_path, writer, monkeypatch):
    target = writer.path(tmp_path)
    old = OLD.get(writer.target, b"old bytes\n")
    target.write_bytes(old)

    def crash(src, dst, **kw):
        raise Crash(f"killed before renaming {src} over {dst}")

    monkeypatch.setattr(os, "replace", crash)
    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(Crash):  # it writes beside the file and renames: never in place
        writer.write(tmp_path)
    assert target.read_bytes() == old


# -- durability: the file before the rename, the directory after it ------------------------------


@pytest.fixture
def syscalls(monkeypatch):
    """(call, inode, is_directory) of every fsync/fdatasync/replace/rename/link, in order: a spy
    around the real calls (they still happen)."""
    calls: list[tuple[str, int, bool]] = []

    def spy_sync(name, real):
        def sync(fd):
            st = os.fstat(fd)
            calls.append((name, st.st_ino, stat.S_ISDIR(st.st_mode)))
            return real(fd)

        return sync

    def spy_rename(name, real):
        def rename(src, dst, **kw):
            calls.append((name, os.stat(src).st_ino, False))
            return real(src, dst, **kw)

        return rename

    monkeypatch.setattr(os, "fsync", spy_sync("fsync", os.fsync))
    monkeypatch.setattr(os, "fdatasync", spy_sync("fsync", os.fdatasync))
    monkeypatch.setattr(os, "replace", spy_rename("rename", os.replace))
    monkeypatch.setattr(os, "rename", spy_rename("rename", os.rename))
    monkeypatch.setattr(os, "link", spy_rename("rename", os.link))  # create_atomic's "rename"
    return calls


@pytest.mark.parametrize("writer", WRITERS, ids=ids(WRITERS))
def test_the_new_file_is_synced_before_the_rename_and_the_directory_after(
    tmp_path, writer, syscalls
):
    target = writer.path(tmp_path)
    if writer.name in REWRITES_EXISTING:
        target.write_bytes(OLD.get(writer.target, b"old bytes\n"))
    directory = tmp_path.stat().st_ino
    writer.write(tmp_path)
    new = target.stat().st_ino
    renames = [i for i, (call, ino, _) in enumerate(syscalls) if call == "rename" and ino == new]
    assert renames, f"{writer.target} was not renamed into place: {syscalls}"
    at = renames[-1]
    assert ("fsync", new, False) in syscalls[:at], f"data not synced before the rename: {syscalls}"
    assert ("fsync", directory, True) in syscalls[at:], f"directory not synced after: {syscalls}"


def test_dead_letters_appended_are_synced_and_a_new_file_is_in_its_directory(tmp_path, syscalls):
    letters = DeadLetters(tmp_path)
    letters.append("events", [({"eid": "1"}, "bad", 27)])
    path = letters.path("events")
    assert ("fsync", path.stat().st_ino, False) in syscalls
    assert ("fsync", tmp_path.stat().st_ino, True) in syscalls  # the new file's entry
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    syscalls.clear()
    letters.append("events", [({"eid": "2"}, "bad", 27)])
    assert [c for c in syscalls if c[2]] == []  # appending to an existing file: no dir sync
    assert [e["row"]["eid"] for e in letters.read("events")] == ["1", "2"]


def test_two_processes_creating_the_day_salt_agree(tmp_path, monkeypatch):
    """The salt is created, never replaced: when another process wrote the day's salt while
    this one was making its own, this one takes the other's (else their ids differ all day)."""
    from sfpltracker.privacy import identity

    other = DailySalts(tmp_path, b"")
    real = identity.secrets.token_bytes
    theirs = []

    def racing(n):
        if not theirs:  # the other process gets there first, in our window
            theirs.append(None)
            theirs[0] = other.salt("2026-01-02")
        return real(n)

    monkeypatch.setattr(identity.secrets, "token_bytes", racing)
    ours = DailySalts(tmp_path, b"").salt("2026-01-02")
    assert ours == theirs[0] == (tmp_path / "2026-01-02").read_bytes()


# -- fsutil itself -------------------------------------------------------------------------------


def test_write_atomic_replaces_content_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "f"
    fsutil.write_atomic(target, b"one", 0o600)
    fsutil.write_atomic(target, "two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_failed_write_removes_its_temporary_file_and_keeps_the_old(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        fsutil.write_atomic(target, 12345)  # not bytes: the write fails after the create
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_the_temporary_file_can_live_elsewhere_on_the_same_file_system(tmp_path):
    logs, scratch = tmp_path / "logs", tmp_path / "scratch"
    logs.mkdir()
    scratch.mkdir()
    watch = DirectoryEvents(logs)
    try:
        fsutil.write_atomic(logs / "1.txt", b"entry")
        fsutil.write_atomic(logs / "2.txt", b"entry", tmp_dir=scratch)
        created = {name for mask, name in watch.events() if mask & IN_CREATE}
    finally:
        watch.close()
    assert (logs / "2.txt").read_bytes() == b"entry"
    # Only the first left a trace of a temporary name in the log directory.
    assert any(n.startswith(".1.txt.") for n in created)
    assert not any(n.startswith(".2.txt.") for n in created)
