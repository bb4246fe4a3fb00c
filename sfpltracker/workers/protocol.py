"""The AMP commands between the gateway's processes, and where their sockets are.

AMP (Twisted's own asynchronous messaging protocol) gives typed request/response calls in both
directions over one connection, with errors mapped to exceptions; its one limit is 64 KiB per
value, so ``BigBytes`` splits a value over numbered keys (query answers can be large).

Worker -> store process (``store.amp``): a series' durable end after each group commit
(``Appended``, no answer: one per commit) and on (re)connecting (``Hello``); the store's reads
and writes (``Query``, ``Insert``, ``Execute``, ``Ping``). Store process -> worker: segments the
loader deleted (``Forget``); the short links' version its poll read (``LinksVersion``); ACME's
challenge answers and certificates (``AcmeHttp01``, ``AcmeAlpn``, ``TlsCertificate``: the store
process obtains them, every worker serves them; see ``workers/tls_share.py``). Every process ->
supervisor (``supervisor.amp``): its numbers (``Report``), answered with the totals over all
processes.
"""

from __future__ import annotations

import json
from pathlib import Path

from twisted.protocols import amp

from sfpltracker.config import WORKER_SOCKET_PATH_MAX
from sfpltracker.store.errors import StoreError

CHUNK = 60000  # under AMP's 65,535-byte limit per value
SUPERVISOR_SOCKET = "supervisor.amp"
STORE_SOCKET = "store.amp"
MAX_SOCKET_PATH = WORKER_SOCKET_PATH_MAX  # sun_path is 108 bytes on Linux


def socket_path(data_dir: Path, name: str) -> str:
    path = str(Path(data_dir).resolve() / name)
    if len(path) > MAX_SOCKET_PATH:
        raise ValueError(f"DataDirectory is too long for a UNIX socket path ({path})")
    return path


class BigBytes(amp.Argument):
    """Bytes of any length: split into ``name``, ``name.1``, ``name.2``, ... values."""

    def toBox(self, name, strings, objects, proto):
        value: bytes = objects[name.decode() if isinstance(name, bytes) else name]
        parts = [value[i : i + CHUNK] for i in range(0, len(value), CHUNK)] or [b""]
        strings[name] = str(len(parts)).encode()
        for i, part in enumerate(parts):
            strings[name + b"." + str(i).encode()] = part

    def fromBox(self, name, strings, objects, proto):
        count = int(strings[name])
        value = b"".join(strings[name + b"." + str(i).encode()] for i in range(count))
        objects[name.decode() if isinstance(name, bytes) else name] = value


class BigJSON(BigBytes):
    def toBox(self, name, strings, objects, proto):
        key = name.decode() if isinstance(name, bytes) else name
        encoded = dict(objects)
        encoded[key] = json.dumps(objects[key], separators=(",", ":")).encode()
        super().toBox(name, strings, encoded, proto)

    def fromBox(self, name, strings, objects, proto):
        super().fromBox(name, strings, objects, proto)
        key = name.decode() if isinstance(name, bytes) else name
        objects[key] = json.loads(objects[key])


STORE_ERRORS: dict[type[Exception], bytes] = {StoreError: b"STORE_ERROR"}


# -- worker -> store process -------------------------------------------------------------------


class Hello(amp.Command):
    """A worker's series and its segments' durable sizes (sent on every connection)."""

    arguments = [(b"series", amp.Unicode()), (b"sizes", BigJSON())]


class Appended(amp.Command):
    """A group commit made ``series`` durable up to (segment, offset)."""

    arguments = [
        (b"series", amp.Unicode()),
        (b"segment", amp.Integer()),
        (b"offset", amp.Integer()),
        (b"records", amp.Integer()),  # acknowledged since the last Appended (for /health)
    ]
    requiresAnswer = False


class Query(amp.Command):
    arguments = [
        (b"sql", amp.Unicode()),
        (b"fmt", amp.Unicode()),
        (b"params", BigJSON()),
        (b"database", amp.Unicode(optional=True)),
    ]
    response = [(b"body", BigBytes())]
    errors = STORE_ERRORS


class Insert(amp.Command):
    arguments = [
        (b"table", amp.Unicode()),
        (b"rows", BigJSON()),
        (b"dedup", amp.Boolean()),
        (b"token", amp.Unicode(optional=True)),
    ]
    response = [(b"stored", amp.Integer())]
    errors = STORE_ERRORS


class Execute(amp.Command):
    arguments = [(b"sql", amp.Unicode())]
    response = [(b"body", BigBytes())]
    errors = STORE_ERRORS


class Ping(amp.Command):
    errors = STORE_ERRORS


# -- store process -> worker -------------------------------------------------------------------


class Forget(amp.Command):
    """The loader deleted these segments of the worker's series (its size on disk shrinks)."""

    arguments = [(b"series", amp.Unicode()), (b"segments", BigJSON())]
    requiresAnswer = False


class LinksVersion(amp.Command):
    """The short links' version the store process read (every poll interval): a worker whose
    links are of another version reloads them (links/cache.py ``told``)."""

    arguments = [(b"version", BigJSON())]
    requiresAnswer = False


class AcmeHttp01(amp.Command):
    """Answer (or, ``remove``, stop answering) an http-01 challenge for ``token``."""

    arguments = [
        (b"token", amp.Unicode()),
        (b"domain", amp.Unicode()),
        (b"key_authorization", amp.Unicode()),
        (b"remove", amp.Boolean()),
    ]


class AcmeAlpn(amp.Command):
    """Present (or, ``remove``, stop presenting) a tls-alpn-01 validation certificate."""

    arguments = [
        (b"domain", amp.Unicode()),
        (b"fullchain", BigBytes()),
        (b"key", BigBytes()),
        (b"remove", amp.Boolean()),
    ]


class TlsCertificate(amp.Command):
    """Serve this certificate for ``domain`` from the next TLS handshake on."""

    arguments = [(b"domain", amp.Unicode()), (b"fullchain", BigBytes()), (b"key", BigBytes())]


# -- every process -> supervisor ---------------------------------------------------------------


class Report(amp.Command):
    """A process's counters and health, about once a second; answered with the counters
    summed over every process (a dead one's last counters included) and each one's state."""

    arguments = [
        (b"role", amp.Unicode()),
        (b"ident", amp.Unicode()),
        (b"pid", amp.Integer()),
        (b"report", BigJSON()),
    ]
    response = [(b"totals", BigJSON())]
