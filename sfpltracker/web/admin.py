"""The admin channel: ``POST /admin/<command>`` over the Unix-domain socket in
``DataDirectory/admin/`` (see ``admin.py`` for why a socket and not a token).

Only a process of the gateway's own user (or root) is served: the directory is 0700, the
socket 0600, and each connection's peer is checked with ``SO_PEERCRED`` as it opens. The body
is a JSON object of arguments (at most ``ADMIN_MAX_BODY_BYTES``); the answer is the command's
JSON result, ``400 {"error": ...}`` for a command that does not exist or refuses its arguments.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import Resource

from sfpltracker import admin
from sfpltracker.cli import admin_commands
from sfpltracker.web.common import body_too_large, finish, write_json
from sfpltracker.web.site import LimitedRequest

if TYPE_CHECKING:
    from sfpltracker.edge.assembly import Edge
    from sfpltracker.gateway import Gateway

log = Logger()

ADMIN_MAX_BODY_BYTES = 1048576  # arguments only: a command's data is never sent in its body
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class AdminResource(Resource):
    isLeaf = True

    def __init__(self, gateway: Gateway, edge: Edge | None = None):
        super().__init__()
        self.gateway = gateway
        self.edge = edge  # for the tls-status / tls-renew admin commands

    def render_POST(self, request):  # noqa: N802 - Twisted's interface
        if not request.path.startswith(b"/admin/"):
            return write_json(request, 404, {"error": "POST /admin/<command>"})
        if body_too_large(request):
            return write_json(
                request, 413, {"error": f"request body larger than {ADMIN_MAX_BODY_BYTES} bytes"}
            )
        name = request.path[7:].decode("latin-1")
        request.content.seek(0)
        try:
            args = json.loads(request.content.read() or b"{}")
            if not isinstance(args, dict):
                raise ValueError("expected a JSON object")
        except ValueError as e:
            return write_json(request, 400, {"error": f"bad arguments: {e}"})
        gw = self.gateway
        d = defer.maybeDeferred(
            admin_commands.run,
            admin.AdminContext(gw.cfg, gw.store, gw, self.edge),
            name,
            args,
        )

        def done(result):
            finish(request, write_json(request, 200, result))

        def failed(failure):
            if failure.check(admin.AdminError):
                finish(request, write_json(request, 400, {"error": str(failure.value)}))
            else:
                log.failure("admin command {name} failed", failure, name=name)
                finish(request, write_json(request, 500, {"error": failure.getErrorMessage()}))

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET


class AdminRequest(LimitedRequest):
    max_body = ADMIN_MAX_BODY_BYTES


class AdminChannel(http.HTTPChannel):
    def connectionMade(self):  # noqa: N802 - Twisted's interface
        super().connectionMade()
        if not peer_allowed(self.transport.getHandle()):
            log.warn("admin socket: a peer of another user was refused")
            self.transport.abortConnection()


def peer_allowed(sock: socket.socket) -> bool:
    """The peer is a process of this user, or root (the file modes say the same: this holds
    should they be changed)."""
    try:
        _, uid, _ = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except OSError:
        return False
    return uid in (os.getuid(), 0)


class AdminSite(server.Site):
    # Twisted's stubs type it as a callable returning its generic channel protocol.
    protocol = AdminChannel  # type: ignore[assignment]
    requestFactory = AdminRequest

    def __init__(self, gateway: Gateway, edge: Edge | None = None):
        super().__init__(AdminResource(gateway, edge))

    def log(self, request):
        pass  # arguments may name a subject (forget, export-subject): never logged


class AdminListener:
    """The socket, listening while the gateway runs (``start``/``stop`` by ``service.py``)."""

    def __init__(self, gateway: Gateway, edge: Edge | None, reactor):
        self.gateway = gateway
        self.edge = edge
        self.reactor = reactor
        self.port = None
        self._dir_fd: int | None = None

    def start(self) -> None:
        path = admin.prepare_socket_dir(self.gateway.cfg.data_dir)
        address, self._dir_fd = admin.socket_address(path)
        # The directory is 0700 before the socket exists; the socket is 0600 once bound.
        self.port = self.reactor.listenUNIX(address, AdminSite(self.gateway, self.edge), mode=0o600)
        log.info("admin commands on {path}", path=str(path))

    @defer.inlineCallbacks
    def stop(self):
        if self.port is not None:
            yield self.port.stopListening()  # removes the socket file
            self.port = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
