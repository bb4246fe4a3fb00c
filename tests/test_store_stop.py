"""Stopping the embedded store cancels its reads and leaves no reader behind (issue 12).

A client query may run for ``QueryTimeoutSeconds``. Before, ``store.stop()`` joined the
reader threads on the reactor thread, so a SIGTERM waited for the query to end (or for its
limit), and the reader sessions were left to the garbage collector. Now the reads in flight
are cancelled (``KILL QUERY``), the reader threads end, every session is closed. Real chDB,
a real gateway process.
"""

from __future__ import annotations

import http.client
import threading
import time
from urllib.parse import urlencode

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from sfpltracker.store.embedded.store import EmbeddedStore
from sfpltracker.store.errors import StoreError
from tests.gateway_process import GatewayProcess
from tests.test_query_limits import ENDLESS

RUNNING = (
    "SELECT count() AS n FROM system.processes "
    "WHERE query LIKE '%cityHash64%' AND query NOT LIKE '%system.processes%'"
)


def chdb_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if "chdb" in t.name]


@pytest_twisted.inlineCallbacks
def test_stop_cancels_a_running_query_and_closes_every_reader_session(tmp_path):
    store = EmbeddedStore(tmp_path / "a", reactor)
    yield store.start()
    assert (yield store.query("SELECT 1 AS x", "TSV")) == b"1\n"  # a gateway read's session
    # Its own limit is far away: only stop() can end it.
    limits = {"max_execution_time": 30, "timeout_overflow_mode": "throw"}
    running = store.user_query(ENDLESS, "TSV", limits=limits)
    outcome: list = []
    running.addBoth(outcome.append)
    while (yield store.query(RUNNING, "TSV")) != b"1\n":
        yield task.deferLater(reactor, 0.05, lambda: None)
    sessions = list(getattr(store, "_sessions", []))

    yield store.stop()
    [failure] = outcome
    # Cancelled by the stop, not ended by its own limit (TIMEOUT_EXCEEDED, 159).
    assert failure.check(StoreError) and failure.value.code == 394, failure.value
    assert chdb_threads() == []
    # Two reader threads: a session each, and one for client queries; all closed.
    assert len(sessions) == 3 and all(s._conn is None for s in sessions)
    assert store._sessions == []
    # Nothing of it holds the engine: another data directory opens in this process.
    other = EmbeddedStore(tmp_path / "b", reactor)
    yield other.start()
    try:
        assert (yield other.query("SELECT count() AS n FROM sfpla.events", "TSV")) == b"0\n"
    finally:
        yield other.stop()
    assert chdb_threads() == []


@pytest_twisted.inlineCallbacks
def test_a_read_asked_for_while_stopping_is_refused(tmp_path):
    store = EmbeddedStore(tmp_path, reactor)
    yield store.start()
    stopping = store.stop()
    with pytest.raises(StoreError, match="stopping"):
        yield store.query("SELECT 1", "TSV")
    yield stopping


def test_a_gateway_stops_on_sigterm_while_a_client_query_runs(tmp_path):
    with GatewayProcess(tmp_path, {"QueryTimeoutSeconds": 600}) as gw:
        answer: list = []

        def client():
            conn = http.client.HTTPConnection("127.0.0.1", gw.query_port, timeout=120)
            try:
                conn.request("POST", "/?" + urlencode({"default_format": "TSV"}), ENDLESS)
                resp = conn.getresponse()
                answer.append((resp.status, resp.read()))
            except (OSError, http.client.HTTPException) as e:
                answer.append(e)
            finally:
                conn.close()

        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(1.5)  # the query is on a reader thread by now
        assert not answer, answer  # still running
        # Was: SIGTERM waited for the query's 600 s, and the process was killed.
        rc = gw.stop(timeout=30)
        thread.join(30)
        assert rc in (0, -15), gw.log_tail()  # twistd re-raises SIGTERM after a clean stop
        assert "sfpltracker stopped" in gw.log_text()
        [got] = answer
        # Told it was cancelled, or cut off as the process ended: never left waiting.
        assert isinstance(got, OSError | http.client.HTTPException) or (
            got[0] == 400 and b"QUERY_WAS_CANCELLED" in got[1]
        ), got
