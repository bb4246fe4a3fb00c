"""Repair chDB's deduplication logs after a crash, before chDB opens its data directory.

ClickHouse commits a part of a ``MergeTree`` table with a deduplication window in two system
calls: it appends the part's block id to the table's deduplication log
(``<table dir>/deduplication_logs/deduplication_log_<n>.txt``, a line ``1\\t<part>\\t<block
id>``), then renames the part's ``tmp_insert_<part>`` directory into place
(``MergeTreeSink``: ``DeduplicationLog::addPart`` before ``renameTempPartAndAdd``; strace of
chDB 26.9 shows the ``write`` of the log line directly followed by the ``rename``). A SIGKILL
between the two leaves a block id whose part never landed; on the next start ClickHouse drops
the ``tmp_insert_`` directory but keeps the id. The re-send of the batch (same token, see
``pipeline/journal.py``) is then skipped by that table as a duplicate: a materialized view's
table stays one batch short for good (seen in ``tests/test_durability.py`` as ``ltvu`` short
by one batch while ``payments``, ``ltv`` and ``ltvv`` were exact).

So before chDB starts, every log line ``1`` whose part is not on disk — no part directory of
the same partition covers its block number (a merge keeps the range, so merged parts still
cover it) — is dropped, and the re-send writes the part. Entries of parts removed on purpose
(``DROP PARTITION``, ``TRUNCATE``) are dropped too; that only matters if a batch of a dropped
partition were re-sent, which the gateway does only for a batch cut short by the last crash.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from twisted.logger import Logger

from sfpltracker.fsutil import write_atomic

log = Logger()

LOG_DIR = "deduplication_logs"
# <partition id>_<min block>_<max block>_<level>[_<mutation>] (a partition id has no '_')
PART_NAME = re.compile(r"^(?P<partition>[^_]+)_(?P<min>\d+)_(?P<max>\d+)_(?P<level>\d+)(?:_\d+)?$")
NOT_PARTS = ("tmp", "delete_tmp", "detached")


def repair_deduplication_logs(chdb_path: Path) -> int:
    """Drop the log entries of parts that never landed, in every table under ``chdb_path``
    (chDB not running). Returns how many were dropped."""
    dropped = 0
    for log_dir in sorted(Path(chdb_path).glob(f"store/*/*/{LOG_DIR}")):
        dropped += _repair_table(log_dir.parent, log_dir)
    return dropped


def _parts_on_disk(table_dir: Path) -> dict[str, list[tuple[int, int]]]:
    ranges: dict[str, list[tuple[int, int]]] = {}
    for entry in table_dir.iterdir():
        if entry.name.startswith(NOT_PARTS) or not entry.is_dir():
            continue
        m = PART_NAME.match(entry.name)
        if m:
            ranges.setdefault(m["partition"], []).append((int(m["min"]), int(m["max"])))
    return ranges


def _landed(part: str, ranges: dict[str, list[tuple[int, int]]]) -> bool:
    m = PART_NAME.match(part)
    if m is None:
        return True  # not a name we understand: leave it alone
    low, high = int(m["min"]), int(m["max"])
    return any(a <= low and high <= b for a, b in ranges.get(m["partition"], ()))


def _repair_table(table_dir: Path, log_dir: Path) -> int:
    ranges = _parts_on_disk(table_dir)
    dropped = 0
    for path in sorted(log_dir.iterdir()):
        if not path.is_file():
            continue
        lines = path.read_bytes().split(b"\n")
        kept = []
        for line in lines:
            fields = line.split(b"\t")
            if len(fields) == 3 and fields[0] == b"1":
                part = fields[1].decode(errors="replace")
                if not _landed(part, ranges):
                    log.warn(
                        "store: the deduplication log of {table} names part {part}, which never "
                        "landed (a crash between ClickHouse's two commit steps); dropped, so a "
                        "re-send of that batch writes it",
                        table=str(table_dir),
                        part=part,
                    )
                    dropped += 1
                    continue
            kept.append(line)
        if len(kept) != len(lines):
            _replace(path, b"\n".join(kept), Path(table_dir).parents[2])
    return dropped


def _replace(path: Path, data: bytes, scratch_dir: Path) -> None:
    """Write ``data`` to ``path`` atomically; the temporary file lives outside the log
    directory (ClickHouse reads every file there as a log)."""
    write_atomic(path, data, 0o644, tmp_dir=scratch_dir)


def repair_if_unused(chdb_path: Path) -> int:
    """``repair_deduplication_logs`` unless another process has the data directory open
    (it holds an ``flock`` on ``status``, as ClickHouse does): then nothing is touched and
    opening the store fails as it would have anyway."""
    chdb_path = Path(chdb_path)
    if not chdb_path.is_dir():
        return 0
    fd = os.open(chdb_path / "status", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0
        return repair_deduplication_logs(chdb_path)
    finally:
        os.close(fd)  # releases the lock
