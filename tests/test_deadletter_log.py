"""A refused row's values never reach the log (issue 12: privacy).

A store's message for a row it refuses quotes the value (``Cannot parse JSON object here:
{...}``, ``expected an integer, got str "..."``), and a value may be personal data. The log
line says which table, how many rows and the class of the reason; the dead-letter file (mode
0600, which holds the row anyway) keeps the whole reason. Real stores: chDB in this process,
Debian's clickhouse-server 18.16.
"""

from __future__ import annotations

import uuid

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from sfpltracker.store.clickhouse.store import ClickHouseStore
from sfpltracker.store.rejects import reason_class
from tests.clickhouse_legacy import downgrade_schema
from tests.servers import ClickHouseServer
from tests.test_poison import event_row

MARKER = "jane.doe.4711@example.com"


@pytest.fixture
def logged():
    """Every log line written while the test runs, as text."""
    lines: list[str] = []

    def observe(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def assert_logged_without_values(lines: list[str], reasons: list[str], table: str) -> None:
    # The stores' messages do quote the marker (else this test would prove nothing) ...
    assert reasons and all(MARKER in r for r in reasons), reasons
    # ... and the log has the line about them, without it.
    about = [line for line in lines if f"deadletter/{table}.jsonl" in line]
    assert about, lines
    assert not [line for line in lines if MARKER in line], lines


@pytest_twisted.inlineCallbacks
def test_chdb_refused_rows_are_logged_without_their_values(store, logged):
    good = event_row(str(uuid.uuid4()), 1)
    # A dotted key naming the same JSON path as a nested one: chDB quotes the path (the key).
    clash = event_row(str(uuid.uuid4()), 2, '{"' + MARKER + '":1,"' + MARKER + '":2}')
    # A lone surrogate: chDB quotes the JSON text around it.
    surrogate = event_row(str(uuid.uuid4()), 3, '{"email":"' + MARKER + '\\ud800"}')
    # A value Arrow cannot convert: its message quotes the value.
    arrow = dict(event_row(str(uuid.uuid4()), 4), server=MARKER)
    stored = yield store.insert("events", [good, clash, surrogate, arrow], token="sfpl-privacy")
    assert stored == 1
    dead = store.deadletters.read("events")
    assert len(dead) == 3
    assert_logged_without_values(logged, [d["reason"] for d in dead], "events")
    [line] = [line for line in logged if "for their data" in line]
    assert "refused 3 row(s) of events" in line
    assert "code 117 INCORRECT_DATA" in line and "not sent: ArrowInvalid" in line


@pytest_twisted.inlineCallbacks
def test_clickhouse_refused_rows_are_logged_without_their_values(tmp_path, logged):
    with ClickHouseServer() as ch:
        store = ClickHouseStore(
            reactor,
            [ch.hostport],
            tmp_path / "data",
            schema_directory=downgrade_schema(tmp_path / "schema"),
        )
        yield store.start()
        try:
            good = event_row(str(uuid.uuid4()), 1)
            bad = dict(event_row(str(uuid.uuid4()), 2), server=MARKER)  # text in an integer
            stored = yield store.insert("events", [good, bad])
            assert stored == 1
            dead = store.deadletters.read("events")
            assert [d["row"]["eid"] for d in dead] == [bad["eid"]]
            assert_logged_without_values(logged, [d["reason"] for d in dead], "events")
            assert [line for line in logged if "(not sent: column server)" in line], logged
        finally:
            yield store.stop()


def test_reason_classes_name_the_code_or_the_exception_type_only():
    assert reason_class(f"Code: 117. DB::Exception: Cannot parse {MARKER}", 117) == (
        "code 117 INCORRECT_DATA"
    )
    assert reason_class(f"Code: 167. DB::Exception: too deep ({MARKER})", 167) == "code 167"
    assert reason_class(f"not sent: ArrowInvalid: Could not convert '{MARKER}'", 0) == (
        "not sent: ArrowInvalid"
    )
    assert reason_class(f"not sent: Code: 53. Type mismatch: {MARKER}", 0) == "not sent: code 53"
    assert reason_class(f'not sent: column n (Int32): got str "{MARKER}"', 0) == (
        "not sent: column n"
    )
    # A reason that does not start the way the stores write theirs: nothing of it.
    assert reason_class(f"{MARKER}: odd", 0) == "unclassified"
    assert reason_class(f"not sent: {MARKER}: odd", 0) == "unclassified"
