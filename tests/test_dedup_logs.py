"""A crash between ClickHouse's two commit steps of a part (the block id appended to the
table's deduplication log, then the part renamed into place) must not keep a re-send from
writing that part (``store/embedded/dedup_logs.py``).

The crash is made deterministically: a batch is inserted with a token, the store is stopped
and the ``ltvu`` view's part is put back to the ``tmp_insert_`` directory it was renamed from,
which is exactly what a SIGKILL between the two steps leaves behind (its block id is in the
log, the part is not in place; ClickHouse removes the ``tmp_insert_`` directory on start).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from sfpltracker.store.embedded.dedup_logs import repair_deduplication_logs
from sfpltracker.store.embedded.store import EmbeddedStore

DAY_MS = 1_767_225_600_000  # 2026-01-01


def payments(n: int) -> list[dict]:
    return [
        {
            "id": str(uuid.uuid4()),
            "uid": str(uuid.uuid4()),
            "vid": str(uuid.uuid4()),
            "orid": str(uuid.uuid4()),
            "hhash": "h",
            "revenue": 1.0,
            "created_at": DAY_MS + i,
        }
        for i in range(n)
    ]


@pytest_twisted.inlineCallbacks
def scalar(store, sql: str) -> str:
    out = yield store.execute(sql)
    return out.decode().strip()


@pytest_twisted.inlineCallbacks
def view_counts(store) -> dict:
    counts = {}
    for table in ("payments", "ltvu", "ltvv"):
        measure = "count()" if table == "payments" else "sum(payments)"
        counts[table] = int((yield scalar(store, f"SELECT {measure} FROM sfpla.{table}")))
    return counts


@pytest_twisted.inlineCallbacks
def test_a_view_part_cut_short_after_its_log_entry_is_written_by_the_resend(tmp_path):
    store = EmbeddedStore(tmp_path, reactor)
    yield store.start()
    yield store.insert("payments", payments(5), token="sfpl-before")
    batch = payments(18)
    yield store.insert("payments", batch, token="sfpl-cut")
    assert (yield view_counts(store)) == {"payments": 23, "ltvu": 23, "ltvv": 23}
    table_dir = Path(
        (yield scalar(store, "SELECT data_paths[1] FROM system.tables WHERE name = 'ltvu'"))
    )
    part = yield scalar(store, "SELECT max(name) FROM system.parts WHERE table = 'ltvu' AND active")
    yield store.stop()
    # The kill: ltvu's block id is in its log, its part never renamed into place.
    (table_dir / part).rename(table_dir / f"tmp_insert_{part}")

    store = EmbeddedStore(tmp_path, reactor)
    yield store.start()
    try:
        assert (yield view_counts(store)) == {"payments": 23, "ltvu": 5, "ltvv": 23}
        # The loader's re-send of the batch in doubt: same rows, same token.
        yield store.insert("payments", batch, token="sfpl-cut")
        assert (yield view_counts(store)) == {"payments": 23, "ltvu": 23, "ltvv": 23}
        yield store.insert("payments", batch, token="sfpl-cut")  # again: nothing changes
        assert (yield view_counts(store)) == {"payments": 23, "ltvu": 23, "ltvv": 23}
    finally:
        yield store.stop()


@pytest_twisted.inlineCallbacks
def test_log_entries_of_parts_on_disk_and_merged_parts_are_kept(tmp_path):
    store = EmbeddedStore(tmp_path, reactor)
    yield store.start()
    for n in range(4):
        yield store.insert("payments", payments(3), token=f"sfpl-{n}")
    yield store.execute("OPTIMIZE TABLE sfpla.ltvu FINAL")
    yield store.stop()
    assert repair_deduplication_logs(store.path) == 0
    store = EmbeddedStore(tmp_path, reactor)
    yield store.start()
    try:
        for n in range(4):  # every batch is still known: re-sends store nothing
            yield store.insert("payments", payments(3), token=f"sfpl-{n}")
        assert (yield view_counts(store)) == {"payments": 12, "ltvu": 12, "ltvv": 12}
    finally:
        yield store.stop()
