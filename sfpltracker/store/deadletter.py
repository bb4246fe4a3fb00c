"""Rows a store could not take, kept on disk with the reason.

A row the server rejects (a value it cannot parse, a constraint, a view that fails on it) would
fail its whole batch forever, and retrying cannot help. So the store sets it aside here and
inserts the rest of its batch: one JSON line per row in ``DataDirectory/deadletter/<table>.jsonl``
with the time, the table, the server's reason (and error code), the server that said so, and
the row itself, ready to be fixed and replayed. Lines are appended and fsynced before the
batch counts as stored, so a row is either in the table or in this file.
"""

from __future__ import annotations

import datetime
import json
import threading
from pathlib import Path

from sfpltracker.fsutil import append_durably, write_atomic


class DeadLetters:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self.replaying: set[str] = set()  # tables a replay is running for (one at a time)

    def path(self, table: str) -> Path:
        return self.directory / f"{table}.jsonl"

    def append(self, table: str, rows: list[tuple[dict, str, int]], server: str = "") -> None:
        """Append ``(row, reason, code)`` entries for ``table`` (blocking: call from a thread)."""
        if not rows:
            return
        at = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        lines = [
            json.dumps(
                {
                    "time": at.replace("+00:00", "Z"),
                    "table": table,
                    "reason": reason,
                    "code": code,
                    "server": server,
                    "row": row,
                },
                default=str,
                ensure_ascii=False,
            )
            + "\n"
            for row, reason, code in rows
        ]
        # A lone surrogate (not UTF-8) is written as its JSON escape, so the row reads back as it was.
        data = "".join(lines).encode("utf-8", "backslashreplace")
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            append_durably(self.path(table), data, 0o600)

    def snapshot(self, table: str) -> bytes:
        """The file's whole lines as they are now (blocking; under the append lock, so no
        append is half written). What is appended later starts right after these bytes."""
        with self._lock:
            try:
                data = self.path(table).read_bytes()
            except FileNotFoundError:
                return b""
        return data[: data.rfind(b"\n") + 1]

    def replace_head(self, table: str, head_size: int, keep: list[bytes]) -> bytes:
        """Replace the first ``head_size`` bytes of the file (a ``snapshot``) by the lines
        ``keep``, leaving what was appended since as it is (blocking); returns that tail.

        Under the append lock, so no append lands between reading the tail and the rename:
        the new file is written beside the old one, fsynced, then renamed over it.
        """
        path = self.path(table)
        with self._lock:
            with open(path, "rb") as f:
                f.seek(head_size)
                tail = f.read()
            write_atomic(path, b"".join(keep) + tail, 0o600)
        return tail

    def read(self, table: str) -> list[dict]:
        """Every entry kept for ``table`` (for operators and tests)."""
        try:
            text = self.path(table).read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]
