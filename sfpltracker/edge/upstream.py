"""A lean HTTP/1.1 client for the reverse proxy's requests (edge/proxy.py).

Twisted's ``Agent`` costs far more per request than the proxying itself: a ``Request`` and
``Response`` object, a ``Headers`` copy each way, a pure-Python response parser, a chain of
Deferreds and a ``TransportProxyProducer`` per answer. Proxied requests go through this
instead: the request head is written as one ``bytes``, a request body (an ``IBodyProducer``:
edge/proxy.py's ``StreamedBody`` or ``BytesBody``) follows as it arrives, the answer is parsed
by llhttp (``httptools.HttpResponseParser``) and its body goes to the client as it arrives.
WebSocket tunnels stay on the splice in edge/proxy.py.

- Connections are kept alive and pooled per upstream (scheme, host, port); at most
  ``max_idle`` idle ones per upstream are kept, the rest are closed when they finish.
- Back-pressure: the upstream connection is the client transport's producer while its body
  is relayed (the client's full buffer pauses the upstream socket); a request body's
  producer is the upstream transport's while it is sent (the upstream's full buffer pauses
  reading from the client).
- A request body goes as it came: with its Content-Length, or chunked (re-framed chunk by
  chunk) when the client sent it chunked.
- A pooled connection the upstream closed before answering (a stale keep-alive) is retried
  once on a fresh connection for a bodiless idempotent request: the rule of RFC 9112 9.3.1
  (and ``Agent``'s). A request with a body is never sent twice: it fails with 502.
- ``timeout`` runs from the request to the answer's head (504) — for a request with a body,
  from its body's end —, then between body chunks while the client is reading (the
  connection is cut when the upstream stalls).
- An answer that ends before the request body has all been sent ends the exchange: the rest
  of the body is not sent and the connection is not reused.
- 1xx interim answers are skipped; an answer without a length ends with the connection.
"""

from __future__ import annotations

from typing import Any

import httptools
from twisted.internet import endpoints, error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS, ResponseFailed, ResponseNeverReceived

from sfpltracker.edge.http import write_now

log = Logger()

IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"DELETE"))
_NO_BODY = frozenset((204, 304))


def _ignore(_) -> None:
    pass  # a body producer stopped by _stop_body (or by a lost connection): nothing to do


class _HeadEnd(Exception):
    """Raised in ``on_headers_complete`` of an answer to HEAD: no body follows it."""


class UpstreamConnection(protocol.Protocol):
    """One kept-alive connection to an upstream; also the client transport's producer while
    it relays an answer (pausing it stops reading the upstream socket)."""

    transport: Any
    fetch: Fetch | None = None
    paused = False
    lost = False

    def __init__(self, pool: UpstreamPool, key: tuple):
        self.pool = pool
        self.key = key

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's interface
        fetch = self.fetch
        if fetch is None:  # an idle connection that speaks cannot be trusted with a request
            self.transport.abortConnection()
            return
        fetch.data_received(data)

    def connectionLost(self, reason=None) -> None:  # noqa: N802
        self.lost = True
        self.pool.forget(self)
        fetch, self.fetch = self.fetch, None
        if fetch is not None:
            fetch.connection_lost(self, reason)

    # -- the client transport's producer -----------------------------------------------------

    def pauseProducing(self) -> None:  # noqa: N802
        if not self.paused and not self.lost:
            self.paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        if self.paused and not self.lost:
            self.paused = False
            self.transport.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        # The client's connection went away mid-answer: the rest is not wanted.
        fetch = self.fetch
        if fetch is not None:
            fetch.cancel()
        elif not self.lost:
            self.transport.abortConnection()


class _Factory(protocol.Factory):
    def __init__(self, pool: UpstreamPool, key: tuple):
        self.pool = pool
        self.key = key

    def buildProtocol(self, addr):  # noqa: N802
        return UpstreamConnection(self.pool, self.key)


class UpstreamPool:
    """Kept-alive connections per (scheme, host, port), and one endpoint for each."""

    def __init__(self, reactor, connect_timeout: float, max_idle: int = 64):
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.tls_policy = BrowserLikePolicyForHTTPS()
        self.idle: dict[tuple, list[UpstreamConnection]] = {}
        self._factories: dict[tuple, tuple[Any, _Factory]] = {}
        self.opened = 0  # connections made, for the tests and the bench

    def take(self, key: tuple) -> UpstreamConnection | None:
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.lost:
                return conn
        return None

    def connect(self, route):
        key = (route.scheme, route.host, route.port)
        made = self._factories.get(key)
        if made is None:
            endpoint = endpoints.HostnameEndpoint(
                self.reactor, route.host, route.port, timeout=self.connect_timeout
            )
            if route.scheme == "https":
                host = route.host.encode("idna")
                creator = self.tls_policy.creatorForNetloc(host, route.port)
                endpoint = endpoints.wrapClientTLS(creator, endpoint)
            made = self._factories[key] = (endpoint, _Factory(self, key))
        self.opened += 1
        return made[0].connect(made[1])

    def release(self, conn: UpstreamConnection) -> None:
        """A connection whose answer has ended cleanly, kept alive: idle in the pool."""
        conn.fetch = None
        if conn.lost:
            return
        conn.resumeProducing()  # the client may have paused it last
        idle = self.idle.setdefault(conn.key, [])
        if len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.transport.loseConnection()

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self.idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                conn.transport.loseConnection()
        self.idle.clear()


class Fetch:
    """One request upstream and its answer, relayed to ``sink``:

    - ``sink.answer(code, phrase, headers, length, conn)``: the final answer's head
      (``headers``: (name, value) pairs as received; ``length``: Content-Length or None);
      returns False when the answer is no longer wanted (the client has gone);
    - ``sink.body(data)``, then ``sink.done()``: the body, as it arrives, and its end;
      ``sink.flush()`` after each read that has not ended it (the head must not wait);
    - ``sink.cut()``: the answer broke off after its head (upstream reset or stalled);
    - ``sink.failed(failure, timed_out)``: no answer (a connect error, the connection closed
      before the head — ``ResponseNeverReceived`` / ``ResponseFailed`` as ``Agent`` says —,
      or ``timed_out``).

    ``body``: the request's body, an ``IBodyProducer`` whose ``startProducing`` gets this
    object as its consumer (``head`` then says Content-Length, or chunked when ``chunked``).
    """

    __slots__ = (
        "pool",
        "route",
        "key",
        "method",
        "head",
        "sink",
        "timeout",
        "reactor",
        "conn",
        "connecting",
        "parser",
        "timer",
        "received",
        "retried",
        "answered",
        "finished",
        "phrase",
        "headers",
        "keep_alive",
        "until_close",
        "interim",
        "reused",
        "body",
        "chunked",
        "sending",
        "sent",
        "stopped",
    )

    def __init__(
        self,
        pool: UpstreamPool,
        route,
        method: bytes,
        head: bytes,
        sink,
        timeout,
        body=None,
        chunked: bool = False,
    ):
        self.pool = pool
        self.route = route
        self.key = (route.scheme, route.host, route.port)
        self.method = method
        self.head = head
        self.sink = sink
        self.timeout = timeout
        self.reactor = pool.reactor
        self.conn: UpstreamConnection | None = None
        self.connecting = None
        self.parser: Any = None  # an httptools.HttpResponseParser once sent
        self.received = False
        self.retried = False
        self.answered = False
        self.finished = False
        self.phrase = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.until_close = False
        self.interim = False
        self.body = body
        self.chunked = chunked
        self.sending = False  # the body's producer is running
        self.sent = body is None  # the whole request is upstream
        self.stopped = False  # the body's producer was stopped before the body's end
        # With a body, the wait for the answer starts once it has been sent (_body_sent).
        self.timer = self.reactor.callLater(timeout, self._timed_out) if self.sent else None
        conn = pool.take(self.key)
        self.reused = conn is not None
        if conn is not None:
            self._send(conn)
        else:
            self._connect()

    # -- connecting and sending --------------------------------------------------------------

    def _connect(self) -> None:
        self.reused = False
        self.connecting = d = self.pool.connect(self.route)
        d.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, conn: UpstreamConnection) -> None:
        self.connecting = None
        if self.finished:  # cancelled meanwhile (time-out, client gone): keep it for later
            conn.fetch = None
            self.pool.release(conn)
            return
        self._send(conn)

    def _connect_failed(self, failure: Failure) -> None:
        self.connecting = None
        if self.finished:
            return  # cancelled: the time-out or the client's leaving answered already
        self._end()
        self.sink.failed(failure, False)

    def _send(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.fetch = self
        # The last client may have paused it after it went back to the pool (its answer's
        # last write, before it let go of its producer): this answer must be read.
        conn.resumeProducing()
        self.parser = httptools.HttpResponseParser(self)
        body = self.body
        if body is None:
            write_now(conn.transport, self.head)
            return
        transport = conn.transport
        # Queued, not sent: the body's first bytes (a small POST's all) go in the same send.
        transport.write(self.head)
        self.sending = True
        # The upstream's full write buffer pauses the body's producer (reading the client).
        transport.registerProducer(body, True)
        body.startProducing(self).addCallbacks(self._body_sent, _ignore)

    def write(self, data: bytes) -> None:
        """A piece of the request body, from its producer (this is its consumer)."""
        conn = self.conn
        if not data or not self.sending or conn is None:
            return
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        conn.transport.write(data)

    def _body_sent(self, _) -> None:
        if not self.sending:
            return  # stopped (_end): the rest of the exchange is over
        self.sending = False
        self.sent = True
        transport = self.conn.transport  # type: ignore[union-attr]
        transport.unregisterProducer()
        if self.chunked:
            transport.write(b"0\r\n\r\n")
        if not self.answered:
            self.timer = self.reactor.callLater(self.timeout, self._timed_out)

    def _stop_body(self) -> None:
        """The exchange ended before the body was all sent: its producer stops."""
        body = self.body
        if body is None or self.sent or self.stopped:
            return
        self.stopped = True
        conn = self.conn
        if self.sending and conn is not None and not conn.lost:
            conn.transport.unregisterProducer()
        self.sending = False
        body.stopProducing()

    # -- the upstream's bytes ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _HeadEnd):
                self._complete()
            else:  # a bug of ours in a callback: never a silent hang
                log.failure("proxy: answer callback failed", Failure(e.__context__))
                self._broken(Failure(e))
        except httptools.HttpParserError as e:
            self._broken(Failure(e))
        if not self.finished:
            self.sink.flush()  # the head, if no body bytes came with it

    def on_message_begin(self) -> None:
        self.phrase = b""
        self.headers = []

    def on_status(self, status: bytes) -> None:
        self.phrase += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        code = parser.get_status_code()
        if 100 <= code < 200 and code != 101:
            self.interim = True  # 100 Continue, 103 Early Hints: not relayed
            return
        self.answered = True
        self.keep_alive = parser.should_keep_alive()
        length = None
        chunked = False
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding":
                chunked = True
        if chunked:
            length = None
        head_only = self.method == b"HEAD" or code in _NO_BODY
        self.until_close = length is None and not chunked and not head_only
        if self.timer is None:  # answered while the body is still going: time the body
            self.timer = self.reactor.callLater(self.timeout, self._timed_out)
        else:
            self._rearm()
        conn = self.conn
        assert conn is not None
        if not self.sink.answer(code, self.phrase, self.headers, length, conn):
            self._abandon()
            raise _HeadEnd()  # (nothing more is parsed: the connection is gone)
        if self.method == b"HEAD":
            raise _HeadEnd()  # llhttp would wait for a body a HEAD answer does not have

    def on_body(self, body: bytes) -> None:
        if self.finished:
            return
        if self.timer is not None:
            self.timer.reset(self.timeout)
        self.sink.body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if not self.finished:
            self._complete()

    def _complete(self) -> None:
        """The answer has ended: the connection goes back to the pool if it can (not when the
        request's body had not all been sent: the upstream would read its rest as a request)."""
        if self.finished:
            return
        conn = self.conn
        sent = self.sent
        self._end()
        # Back in the pool before the client's answer ends: a pipelined next request can
        # take it at once.
        if conn is not None and not conn.lost:
            if self.keep_alive and sent:
                self.pool.release(conn)
            else:
                conn.fetch = None
                conn.transport.loseConnection()
        self.sink.done()

    def _broken(self, failure: Failure) -> None:
        """Not an HTTP answer (or ours failed on it): nothing more is read from it."""
        if self.finished:
            return
        answered = self.answered
        self._abandon()
        if answered:
            self.sink.cut()
        else:
            self.sink.failed(Failure(ResponseFailed([failure])), False)

    def connection_lost(self, conn: UpstreamConnection, reason) -> None:
        if self.finished:
            return
        if self.answered:
            if self.until_close and reason is not None and reason.check(error.ConnectionDone):
                self._complete()  # a body delimited by the end of the connection
            else:
                self._end()
                self.sink.cut()
            return
        if (
            not self.received
            and not self.retried
            and self.body is None
            and self.method in IDEMPOTENT
            and self.reused
            and self.conn is conn
        ):
            # A kept-alive connection the upstream had closed: try once on a fresh one.
            self.retried = True
            self.conn = None
            self._connect()
            return
        self._end()
        why = [reason] if reason is not None else []
        wrapped = ResponseFailed(why) if self.received else ResponseNeverReceived(why)
        self.sink.failed(Failure(wrapped), False)

    # -- time-outs and cancelling ------------------------------------------------------------

    def _rearm(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.reset(self.timeout)

    def _timed_out(self) -> None:
        self.timer = None
        if self.finished:
            return
        conn = self.conn
        if self.answered:
            if conn is not None and conn.paused:
                # The client is not reading: that is not the upstream stalling.
                self.timer = self.reactor.callLater(self.timeout, self._timed_out)
                return
            log.info("proxy: upstream stalled mid-response; cutting the connection")
            self._abandon()
            self.sink.cut()
            return
        self._abandon()
        self.sink.failed(None, True)

    def cancel(self) -> None:
        """The client has gone before the answer's end: drop the upstream exchange."""
        if not self.finished:
            self._abandon()

    def _abandon(self) -> None:
        """End without reusing the connection (its state is unknown)."""
        conn = self.conn
        self._end()
        if conn is not None and not conn.lost:
            conn.fetch = None
            conn.transport.abortConnection()
        # (A connection still being made is kept for the next request: _connected.)

    def _end(self) -> None:
        self.finished = True
        if self.body is not None:
            self._stop_body()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.conn = None
