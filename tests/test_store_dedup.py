"""Dedup of retried and replayed rows: the shared key logic, and the embedded store using it
(the clickhouse store's use of it is in test_clickhouse_store.py)."""

from __future__ import annotations

import uuid

import pytest_twisted
from twisted.internet import reactor

from sfpltracker.store.dedup import DEDUP_KEYS, drop_stored, keys_to_check
from sfpltracker.store.embedded.store import DEDUP_KEYS as EMBEDDED_KEYS
from sfpltracker.store.embedded.store import EmbeddedStore


def test_keys_and_filter():
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    rows = [{"eid": a}, {"eid": b.upper()}, {"url": "/no-key"}]
    assert keys_to_check("events", rows) == ("eid", [a, b.upper()])
    assert keys_to_check("hits", rows) == (None, [])
    assert drop_stored(rows, "eid", {b}) == [rows[0], rows[2]]  # keys compare case-blind
    assert EMBEDDED_KEYS is DEDUP_KEYS  # one definition for every store


@pytest_twisted.inlineCallbacks
def test_embedded_store_skips_stored_rows_on_retry(tmp_path):
    store = EmbeddedStore(tmp_path, reactor)
    yield store.start()
    try:
        rows = [
            {"eid": str(uuid.uuid4()), "created_at": 1_767_225_600_000 + i, "url": f"/{i}"}
            for i in range(8)
        ]
        assert (yield store.insert("events", rows[:5])) == 5
        assert (yield store.insert("events", rows, dedup=True)) == 3
        out = yield store.query("SELECT count() AS n, uniqExact(eid) AS u FROM sfpla.events")
        assert out == b'{"n":8,"u":8}\n'
    finally:
        yield store.stop()
