"""What a ``dashboard rebuild`` killed midway leaves is undone when the store opens again.

The rebuild (dashboard/rollups.py) makes ``<t>__rebuild`` with a view filling it and stops
merges of ``events`` until its backfill ends. A gateway killed in between left the view
writing a table no one reads on every insert and, on a ClickHouse server, merges of
``events`` stopped for good: its parts piled up until the server refused inserts. Here the
leftovers are made exactly as the rebuild makes them (its own renaming of the schema's view),
on a real clickhouse-server (18.16) and on the embedded store, and the store is opened again.
"""

from __future__ import annotations

import uuid

import pytest_twisted
from twisted.internet import reactor

from sfpltracker.dashboard.rollups import SUFFIX, _renamed
from sfpltracker.store.clickhouse.store import ClickHouseStore
from sfpltracker.store.embedded.store import EmbeddedStore
from sfpltracker.store.schema import load_statements
from tests.clickhouse_legacy import downgrade_schema
from tests.servers import ClickHouseServer


def _leftovers(db: str, schema_directory=None) -> list[str]:
    """A rebuild of dash_funnel killed during its backfill: new table, its view, merges off."""
    view = next(s.sql for s in load_statements(db, schema_directory) if s.name == "dash_funnel_mv")
    view = _renamed(_renamed(view, db, "dash_funnel_mv", "dash_funnel_mv" + SUFFIX), db,
                    "dash_funnel", "dash_funnel" + SUFFIX)  # fmt: skip
    return [
        f"CREATE TABLE {db}.dash_funnel{SUFFIX} AS {db}.dash_funnel",
        view,
        f"SYSTEM STOP MERGES {db}.events",
    ]


def _two_parts(db: str) -> list[str]:
    return [f"INSERT INTO {db}.events (ename) SELECT 'part{n}'" for n in (1, 2)]


def _rows(answer) -> list[str]:
    return answer.decode().split() if isinstance(answer, bytes) else str(answer).split()


@pytest_twisted.inlineCallbacks
def _undone_on_reopen(open_store, db: str, schema_directory=None):
    store = open_store()
    yield store.start()
    try:
        for sql in _leftovers(db, schema_directory) + _two_parts(db):
            yield store.execute(sql)
        left = f"SELECT name FROM system.tables WHERE database = '{db}' AND name LIKE '%rebuild%'"
        assert sorted(_rows((yield store.execute(left)))) == [
            "dash_funnel__rebuild",
            "dash_funnel_mv__rebuild",
        ]
    finally:
        yield store.stop()

    store = open_store()
    yield store.start()
    try:
        assert _rows((yield store.execute(left))) == []
        # Merges of events run again: the two parts become one.
        yield store.execute(f"OPTIMIZE TABLE {db}.events FINAL")
        parts = (
            f"SELECT count() FROM system.parts WHERE database = '{db}' AND table = 'events' "
            "AND active"
        )
        assert _rows((yield store.execute(parts))) == ["1"]
        # The schema's own view still fills dash_funnel.
        yield store.execute(
            f"INSERT INTO {db}.events (ename, vid, server, bot) "
            f"SELECT 'after', generateUUIDv4(), 0, 0"
        )
        count = f"SELECT count() FROM {db}.dash_funnel WHERE ename = 'after'"
        assert _rows((yield store.execute(count))) == ["1"]
    finally:
        yield store.stop()


@pytest_twisted.inlineCallbacks
def test_on_a_clickhouse_server(tmp_path):
    schema = downgrade_schema(tmp_path / "schema")
    db = "left_" + uuid.uuid4().hex[:8]
    with ClickHouseServer() as server:
        yield _undone_on_reopen(
            lambda: ClickHouseStore(
                reactor,
                [server.hostport],
                tmp_path / "data",
                database=db,
                schema_directory=schema,
            ),  # fmt: skip
            db,
            schema,
        )


@pytest_twisted.inlineCallbacks
def test_on_the_embedded_store(tmp_path):
    yield _undone_on_reopen(lambda: EmbeddedStore(tmp_path / "data", reactor), "sfpla")
