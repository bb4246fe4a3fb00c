"""Requests whose body is streamed to a handler instead of being buffered.

Twisted's ``Request`` reads the whole body (into memory or a temp file) before the resource
runs. That is right for the tracking API (bodies are small and limited by ``MaxBodyBytes``) but
not for a reverse proxy, which must pass a 50 MB upload on as it arrives. So when the site says
a request will be proxied (``site.wants_stream(request)``, decided from its method, host and
path once the headers are in), the resource runs *at once*, with the body still to come, and
the body arrives chunk by chunk at ``request.body_sink`` (``data(bytes)`` / ``end()``); the
handler pauses the client's connection while its upstream cannot take more.

The routing order is unchanged: the same root renders the request, so ops routes, the API and
earlier fallbacks still get their turn; they just cannot read a body (none of them needs one
on a proxied path). A response finished before the body ended closes the connection after it,
since the rest of the body is no longer wanted.
"""

from __future__ import annotations

import io

from sfpltracker.web.site import LimitedRequest

# Body bytes a request keeps while its route is still deciding (see keep_early) before it
# stops reading its client: at most one more socket read arrives after the pause.
EARLY_BODY_BYTES = 65536


def keep_early(kept: list[bytes] | None, data: bytes, pause) -> list[bytes]:
    """``kept`` + ``data``; ``pause()`` once they reach EARLY_BODY_BYTES."""
    kept = kept if kept is not None else []
    kept.append(data)
    if sum(map(len, kept)) >= EARLY_BODY_BYTES:
        pause()
    return kept


class StreamingRequest(LimitedRequest):
    streaming = False  # the body goes to ``body_sink`` as it arrives
    body_sink = None
    declared_length: int | None = None
    _body_done = True
    _early_body: list[bytes] | None = None

    def gotLength(self, length):
        wants = getattr(getattr(self.channel, "site", None), "wants_stream", None)
        if length != 0 and wants is not None:
            # The request line is known to the channel only until the body has been read.
            method, uri = self.channel._command, self.channel._path
            if wants(self, method, uri):
                self.streaming = True
                self._body_done = False
                self.declared_length = length
                self.content = io.BytesIO()  # stays empty: nothing is buffered
                super().requestReceived(method, uri, self.channel._version)
                return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if not self.streaming:
            return super().handleContentChunk(data)
        if self.finished:
            self._early_body = None  # answered already: the body is not wanted
        elif self.body_sink is not None:
            self.body_sink.data(data)
        else:  # the route has not decided yet (keep_early)
            self._early_body = keep_early(self._early_body, data, self.pause_reading)

    def attach_body(self, sink) -> None:
        """``sink`` takes the body from here on, after what was read before it came."""
        self.body_sink = sink
        early, self._early_body = self._early_body, None
        for chunk in early or ():
            sink.data(chunk)
        if self._body_done:
            sink.end()

    def requestReceived(self, command, path, version):
        if not self.streaming:
            return super().requestReceived(command, path, version)
        # Called by the channel when the streamed body has ended.
        self._body_done = True
        if self.body_sink is not None:
            self.body_sink.end()
        # (If the answer was already sent, the connection is closing; connectionLost ends
        # this request.)

    def write(self, data):
        if self.streaming and not self._body_done and not self.startedWriting:
            self.setHeader(b"connection", b"close")
            self.channel.persistent = False
        super().write(data)

    def _cleanup(self):
        if self._early_body is not None:  # answered without taking the body: read again
            self._early_body = None
            self.resume_reading()
        if self.streaming and not self._body_done:
            # Answered before the body ended: the rest of it is not wanted, and the channel
            # must not parse it as requests. Close once the answer is written and read
            # nothing more (as Twisted does after a non-persistent request).
            channel = self.channel
            channel.persistent = False
            channel.dataReceived = _ignore
            channel.loseConnection()
            return
        super()._cleanup()

    def pause_reading(self) -> None:
        """Stop reading from the client (its upstream is not ready for more)."""
        transport = getattr(self.channel, "transport", None)
        if transport is not None:
            transport.pauseProducing()

    def resume_reading(self) -> None:
        transport = getattr(self.channel, "transport", None)
        if transport is not None:
            transport.resumeProducing()


def _ignore(data: bytes) -> None:
    pass
