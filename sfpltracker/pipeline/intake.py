"""The intake: where an accepted record is acknowledged.

``accept(records)`` returns a Deferred that fires when the records are accepted — the web
layer answers 2xx only then — or fails with ``Refused`` (answered 503 with ``Retry-After``).
A record is ``(table, row)``.

``MemoryIntake`` acknowledges once the records are queued in the batcher: fast, but rows in
memory are lost if the process dies. The durable spool replaces it with an intake that
acknowledges after fsync, and a loader that feeds the same batcher.
"""

from __future__ import annotations

from collections import defaultdict

from twisted.internet import defer
from twisted.logger import Logger

log = Logger()

Record = tuple[str, dict]

# Records for the outputs (the Conversions API, notify/facebook.py), accepted and spooled with
# their event but never inserted into a store: the loader hands them to ``outputs``.
OUTPUT_TABLE = "capi"


class Refused(Exception):
    """Records cannot be accepted now; the client should retry after ``retry_after`` s."""

    def __init__(self, reason: str, retry_after: int = 1):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class MemoryIntake:
    def __init__(self, batcher, max_queued_rows: int = 200_000):
        self.batcher = batcher
        self.max_queued_rows = max_queued_rows
        self.lost_rows = 0
        self.outputs: list = []  # as the spool loader's (no replay: positions are None)

    def start(self) -> defer.Deferred:
        return defer.succeed(None)

    def accept(self, records: list[Record]) -> defer.Deferred:
        if not self.batcher.breaker.allows():
            return defer.fail(Refused("the store is unavailable", retry_after=5))
        if self.batcher.queued_rows + len(records) > self.max_queued_rows:
            return defer.fail(Refused("too many events waiting for the store", retry_after=2))
        by_table: dict[str, list[dict]] = defaultdict(list)
        for table, row in records:
            by_table[table].append(row)
        captured = by_table.pop(OUTPUT_TABLE, None)
        if captured:
            for output in self.outputs:
                items = [(None, False, row) for row in captured]
                d = defer.maybeDeferred(output.take, items)
                d.addErrback(self._lost, OUTPUT_TABLE, len(captured))
        for table, rows in by_table.items():
            self.batcher.add(table, rows).addErrback(self._lost, table, len(rows))
        return defer.succeed(None)

    def _lost(self, failure, table: str, count: int) -> None:
        self.lost_rows += count
        log.error(
            "{count} {table} rows lost: {why}",
            count=count,
            table=table,
            why=failure.getErrorMessage(),
        )

    def health(self) -> dict:
        breaker = self.batcher.breaker.state
        status = "ok" if breaker == "closed" else ("down" if breaker == "open" else "degraded")
        return {"status": status, "spool": {"durability": "memory"}}

    def close(self) -> defer.Deferred:
        return self.batcher.flush_all()
