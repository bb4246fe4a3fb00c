"""Stopping the ClickHouse server store does not hold the reactor while a query runs.

``stop()`` joined the store's thread pool on the reactor thread, so a query in flight (a
client's may run for ``QueryTimeoutSeconds``) froze the whole process: no request answered,
no timer fired, until it ended. Here the query in flight is one the reactor itself must let
finish: it reads a URL from a test HTTP server that answers only when the reactor runs a tick
after ``stop()`` was called (or, failing that, after a long fallback, saying so). A real
clickhouse-server (18.16) runs the query.
"""

from __future__ import annotations

import http.server
import threading
import uuid

import pytest_twisted
from twisted.internet import reactor, task

from sfpltracker.store.clickhouse.store import ClickHouseStore
from tests.clickhouse_legacy import downgrade_schema
from tests.servers import ClickHouseServer

FALLBACK_SECONDS = 20  # how long the page waits for the reactor before answering without it


class GatedPage:
    """An HTTP server on 127.0.0.1 whose one page is held until ``release()`` (from the
    reactor) or the fallback; its body says which."""

    def __init__(self):
        self.released = threading.Event()
        self.asked = threading.Event()
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's interface
                gate.asked.set()
                body = b"by_reactor\n" if gate.released.wait(FALLBACK_SECONDS) else b"fallback\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest_twisted.inlineCallbacks
def test_stop_with_a_query_in_flight_leaves_the_reactor_running(tmp_path):
    page = GatedPage()
    with ClickHouseServer() as server:
        store = ClickHouseStore(
            reactor,
            [server.hostport],
            tmp_path / "data",
            database="stop_" + uuid.uuid4().hex[:8],
            schema_directory=downgrade_schema(tmp_path / "schema"),
        )
        try:
            yield store.start()
            in_flight = store.execute(
                f"SELECT * FROM url('http://127.0.0.1:{page.port}/x', TSV, 'answer String')"
            )
            while not page.asked.is_set():  # the server is reading the page: the query runs
                yield task.deferLater(reactor, 0.05, lambda: None)

            # A tick of the reactor after stop() began releases the page.
            ticker = task.LoopingCall(page.released.set)
            stopping = store.stop()
            ticker.start(0.05, now=False)
            answer = yield in_flight
            yield stopping
            ticker.stop()
            assert answer == b"by_reactor\n"  # was b"fallback\n": the reactor was held
            assert not store.threads.started
            assert not any(t.is_alive() for t in store.threads.threads)  # joined
        finally:
            page.close()
            if store.threads.started:
                yield store.stop()
