"""A real upstream for the reverse-proxy tests, run as its own process.

    python tests/edge_upstream.py HTTP_PORT WS_PORT

HTTP (Twisted) on 127.0.0.1:HTTP_PORT:
Paths may start with /api/ (ignored).
  /echo...          any method: JSON {method, uri, headers, body_len, body_sha256}
  /big/<n>          n bytes of a repeating pattern, Content-Length set, written by a producer
  /chunked/<n>      n chunks of 1000 bytes, no Content-Length
  /slow/<seconds>   answers "slow" after the delay
  /status/<code>    answers that status
  /stall            sends headers and 10 bytes of a 1000-byte body, then nothing
WebSocket (the ``websockets`` package) on 127.0.0.1:WS_PORT: the first message sent is the
upgrade request's headers as JSON; then every message is echoed back.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading

from twisted.internet import reactor
from twisted.web import resource, server

PATTERN = bytes(range(256)) * 64  # 16 KiB


class BigProducer:
    def __init__(self, request, n):
        self.request = request
        self.left = n
        self.paused = False

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.left > 0:
            chunk = PATTERN[: min(len(PATTERN), self.left)]
            self.left -= len(chunk)
            self.request.write(chunk)
        if self.left == 0 and self.request is not None:
            self.request.unregisterProducer()
            self.request.finish()
            self.request = None

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.left = 0
        self.request = None


class Upstream(resource.Resource):
    isLeaf = True

    def render(self, request):
        parts = request.path.decode().strip("/").split("/")
        if parts[0] == "api":  # the gateway passes /api/... on unchanged
            parts = parts[1:]
        kind = parts[0]
        if kind == "big":
            n = int(parts[1])
            request.setHeader(b"content-length", str(n).encode())
            request.setHeader(b"content-type", b"application/octet-stream")
            producer = BigProducer(request, n)
            request.registerProducer(producer, True)
            producer.resumeProducing()
            return server.NOT_DONE_YET
        if kind == "chunked":
            for _ in range(int(parts[1])):
                request.write(b"x" * 1000)
            request.finish()
            return server.NOT_DONE_YET
        if kind == "slow":
            reactor.callLater(float(parts[1]), _finish, request, b"slow")
            return server.NOT_DONE_YET
        if kind == "status":
            request.setResponseCode(int(parts[1]))
            return b"status"
        if kind == "stall":
            request.setHeader(b"content-length", b"1000")
            request.write(b"0123456789")
            return server.NOT_DONE_YET
        request.content.seek(0)
        digest, length = hashlib.sha256(), 0
        while chunk := request.content.read(1 << 20):
            digest.update(chunk)
            length += len(chunk)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-upstream", b"yes")
        request.setHeader(b"keep-alive", b"timeout=5")
        # A header the upstream names in its Connection header is for the gateway alone.
        request.setHeader(b"connection", b"x-hop-private")
        request.setHeader(b"x-hop-private", b"only for the next hop")
        headers = {
            k.decode().lower(): [v.decode() for v in vs]
            for k, vs in request.requestHeaders.getAllRawHeaders()
        }
        return json.dumps(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": headers,
                "body_len": length,
                "body_sha256": digest.hexdigest(),
            }
        ).encode()


def _finish(request, body):
    if not request._disconnected:
        request.write(body)
        request.finish()


def serve_websockets(port: int) -> None:
    from websockets.sync.server import serve

    def handler(ws):
        ws.send(json.dumps({k.lower(): v for k, v in ws.request.headers.raw_items()}))
        for message in ws:
            ws.send(message)

    with serve(handler, "127.0.0.1", port) as ws_server:
        ws_server.serve_forever()


def main() -> None:
    http_port, ws_port = int(sys.argv[1]), int(sys.argv[2])
    threading.Thread(target=serve_websockets, args=(ws_port,), daemon=True).start()
    reactor.listenTCP(http_port, server.Site(Upstream()), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
