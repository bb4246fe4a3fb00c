"""In-memory parts for tests: a store that keeps the store contract, and the gateway's whole
resource tree driven over an in-memory connection.

``MemoryStore`` is what a unit test gives the batcher, the loader, the journal or a gateway
instead of chDB. It keeps the contract of ``ARCHITECTURE.md`` "A store", the parts of it the
pipeline relies on included:

- ``insert(table, rows, dedup=False, token=None) -> Deferred[int]``: with ``dedup`` (and no
  token) rows whose ``store.dedup.DEDUP_KEYS`` key is stored already are skipped; a ``token``
  makes the insert idempotent like chDB's ``insert_deduplication_token``: each *part* (the
  table's, then each of its ``views``' in turn) is written once per token, so a batch sent again
  after a crash between parts writes only the missing ones;
- ``query()`` answers the reads of the routes a memory test drives (``READERS``: consent
  history, short links, accounts), computed from what was inserted; any other SQL fails with
  ``StoreError`` naming it rather than answering something made up;
- ``start``/``stop``/``ping``/``sync``/``load_schema``, ``without_stored``.

What a test can make it do: ``down`` (every call fails as a store outage), ``fail_next`` (the
next N inserts fail), ``held`` (a list: inserts wait there until the test fires them), and
``after_part`` (called between the parts of a token insert: raise ``NoAnswer`` for a process
that died there, any other exception for an insert that failed there).

``MemoryGateway`` builds the gateway as ``service.GatewayService`` does (the edge site, its
``GatewayRoot``, the short links, the fallbacks), on a ``MemoryStore``, a ``MemoryReactorClock``
and ``Durability: "memory"``; ``gw.http(...)`` sends a request through treq's ``StubTreq``
plumbing (``RequestTraversalAgent``: an in-memory connection) to the real ``EdgeSite`` (the real request class: body caps, header checks) and
returns the same ``Response`` the real-process tests get. No process, no socket, no thread:
use it where the assertions are about answers and rows; durability, kills, TLS, WebSockets
and the query listener need the real process (``tests/gateway_process.py``).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from treq.testing import RequestTraversalAgent
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from zope.interface import implementer

from sfpltracker.store.deadletter import DeadLetters
from sfpltracker.store.dedup import DEDUP_KEYS, drop_stored, keys_to_check
from sfpltracker.store.errors import StoreError
from sfpltracker.store.schema import DEFAULT_DATABASE, schema_dir

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,100}$")  # what chDB's store accepts as a token


class Insert(NamedTuple):
    """One ``insert`` call as it was made (rows as sent, before any dedup)."""

    table: str
    rows: list[dict]
    dedup: bool
    token: str | None


class NoAnswer(Exception):
    """Raised by ``after_part``: the insert's process died there; its caller never hears."""


Reader = Callable[["MemoryStore", re.Match, dict], list[dict]]


class MemoryStore:
    """A ``store.interface.Store``; a ``TokenStore`` when ``tokens`` (the default, as chDB)."""

    kind = "memory"
    cluster = ""  # one store, no cluster
    server_version = ""  # no server to name

    def __init__(
        self,
        *,
        database: str = DEFAULT_DATABASE,
        views: dict[str, list[str]] | None = None,
        tokens: bool = True,
        readers: list[tuple[str, Reader]] | None = None,
        data_dir: Path | None = None,
    ):
        self.database = database
        # It refuses whole inserts and sets no rows aside, so the directory is only ever read
        # (``deadletter replay``: nothing there); it is created only if something writes to it.
        where = data_dir or Path(tempfile.gettempdir()) / f"sfpltracker-memory-{uuid.uuid4().hex}"
        self.deadletters = DeadLetters(Path(where) / "deadletter")
        self.views = views or {}  # source table -> its materialized views' target tables
        self.insert_tokens = tokens  # chDB: True; a ClickHouse server store: False
        self.readers = [(re.compile(p, re.S), fn) for p, fn in (readers or READERS)]
        self.known = schema_tables()  # an insert elsewhere fails, as in chDB
        self.tables: dict[str, list[dict]] = defaultdict(list)
        self.tokens: dict[str, set[str]] = defaultdict(set)  # per table (part)
        self.calls: list[Insert] = []
        self.queries: list[str] = []
        self.down = False
        self.fail_next = 0
        self.held: list[defer.Deferred] | None = None
        self.after_part: Callable[[str], None] | None = None
        self.started = self.stopped = False
        self.synced = 0

    @property
    def where(self) -> str:
        return "memory"

    def metric_families(self) -> list:
        return []  # no dead letters to count

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        self.started = True
        return defer.succeed(None)

    def stop(self) -> defer.Deferred:
        self.stopped = True
        return defer.succeed(None)

    def load_schema(self) -> defer.Deferred:
        return defer.succeed(0)

    def ping(self) -> defer.Deferred:
        return self._unless_down(b"1\n")

    def sync(self) -> defer.Deferred:
        self.synced += 1
        return defer.succeed(None)

    # -- writes -------------------------------------------------------------------------------

    def insert(
        self, table: str, rows: list[dict], dedup: bool = False, token: str | None = None
    ) -> defer.Deferred:
        rows = [dict(r) for r in rows]  # what was sent, whatever the caller does later
        self.calls.append(Insert(table, rows, dedup, token))
        if token is not None and not _TOKEN.match(token):
            return defer.fail(StoreError(f"bad insert token {token!r}"))
        if table not in self.known:
            return defer.fail(StoreError(f"no table {self.database}.{table}", 60))
        if self.down:
            return defer.fail(StoreError("store down (MemoryStore.down)", 210))
        if self.fail_next:
            self.fail_next -= 1
            return defer.fail(StoreError("insert failed (MemoryStore.fail_next)", 210))
        if self.held is not None:
            d: defer.Deferred = defer.Deferred()
            d.addCallback(lambda _: self._store(table, rows, dedup, token))
            self.held.append(d)
            return d
        try:
            return defer.succeed(self._store(table, rows, dedup, token))
        except NoAnswer:
            return defer.Deferred()  # never fires: the process is gone
        except Exception:
            return defer.fail()

    def _store(self, table: str, rows: list[dict], dedup: bool, token: str | None) -> int:
        if dedup and token is None:
            rows = self._without_stored(table, rows)
        parts = [table, *self.views.get(table, ())]
        for i, part in enumerate(parts):
            if token is None or token not in self.tokens[part]:
                self.tables[part].extend(rows)
                if token is not None:
                    self.tokens[part].add(token)
            if i < len(parts) - 1 and self.after_part is not None:
                self.after_part(part)
        return len(rows)

    def without_stored(self, table: str, rows: list[dict]) -> defer.Deferred:
        return self._unless_down(self._without_stored(table, rows))

    def _without_stored(self, table: str, rows: list[dict]) -> list[dict]:
        key, wanted = keys_to_check(table, rows)
        if key is None or not wanted:
            return rows
        stored = {str(r.get(key) or "").lower() for r in self.tables[table]}
        return drop_stored(rows, key, stored & {str(k).lower() for k in wanted})

    def execute(self, sql: str) -> defer.Deferred:
        return defer.fail(StoreError(f"MemoryStore runs no statements: {sql[:80]}"))

    # -- reads --------------------------------------------------------------------------------

    def rows(self, table: str) -> list[dict]:
        """What ``table`` holds (every version of every row, in insert order)."""
        return list(self.tables.get(table, ()))

    def query(
        self,
        sql: str,
        fmt: str = "JSONEachRow",
        params: dict[str, Any] | None = None,
        database: str | None = None,
    ) -> defer.Deferred:
        self.queries.append(sql)
        if self.down:
            return defer.fail(StoreError("store down (MemoryStore.down)", 210))
        for pattern, reader in self.readers:
            m = pattern.search(sql)
            if m is not None:
                return defer.succeed(_format(reader(self, m, params or {}), fmt))
        return defer.fail(StoreError(f"MemoryStore cannot answer {sql[:200]!r}"))

    def user_query(
        self, sql: str, fmt: str, database: str | None = None, limits=None
    ) -> defer.Deferred:
        return defer.fail(StoreError("the query listener needs a real store"))

    def _unless_down(self, value) -> defer.Deferred:
        if self.down:
            return defer.fail(StoreError("store down (MemoryStore.down)", 210))
        return defer.succeed(value)

    def latest(self, table: str, key: str, version: str = "updated_at") -> list[dict]:
        """``table FINAL`` of a ReplacingMergeTree: the newest version of each key."""
        newest: dict[Any, dict] = {}
        for row in self.tables.get(table, ()):
            k = row.get(key)
            if k not in newest or row.get(version, 0) >= newest[k].get(version, 0):
                newest[k] = row
        return list(newest.values())


def schema_tables() -> set[str]:
    """The tables the schema files create (materialized views' targets included)."""
    create = re.compile(rf"CREATE TABLE IF NOT EXISTS {DEFAULT_DATABASE}\.(\w+)")
    return {m for path in schema_dir().glob("*.sql") for m in create.findall(path.read_text())}


def _format(rows: list[dict], fmt: str) -> bytes:
    if fmt == "JSONEachRow":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if fmt == "TabSeparated":
        return "".join("\t".join(str(v) for v in r.values()) + "\n" for r in rows).encode()
    raise StoreError(f"MemoryStore speaks JSONEachRow and TabSeparated, not {fmt}")


# -- the reads of the routes a memory test drives ------------------------------------------------


def _agreements(store: MemoryStore, m: re.Match, params: dict) -> list[dict]:
    from sfpltracker.ingest.consent import PRIVATE_COLUMNS

    rows = [
        r for r in store.latest("agreed", DEDUP_KEYS["agreed"]) if r.get("vid") == params["vid"]
    ]
    rows.sort(key=lambda r: (r.get("created_at", 0), r.get("id", "")), reverse=True)
    return [{k: v for k, v in r.items() if k not in PRIVATE_COLUMNS} for r in rows]


def _live_links(store: MemoryStore, now: int | None = None) -> list[dict]:
    return [
        r
        for r in store.latest("redirects", "urlfrom")
        if not r.get("deleted") and (now is None or not r.get("expires") or r["expires"] > now)
    ]


def _link_version(store: MemoryStore, m: re.Match, params: dict) -> list[dict]:
    redirects = store.rows("redirects")
    newest = max((r.get("updated_at", 0) for r in redirects), default=0)
    history = store.rows("redirect_history")
    return [{"changes": len(history), "newest": newest, "versions": len(redirects)}]


def _links_load(store: MemoryStore, m: re.Match, params: dict) -> list[dict]:
    return _live_links(store, params["now"])[: params["limit"]]


def _link_hosts(store: MemoryStore, m: re.Match, params: dict) -> list[dict]:
    return [{"host": h} for h in sorted({r["host"] for r in _live_links(store)})]


def _link(store: MemoryStore, m: re.Match, params: dict) -> list[dict]:
    return [r for r in store.latest("redirects", "urlfrom") if r["urlfrom"] == params["key"]][:1]


def _account(store: MemoryStore, m: re.Match, params: dict) -> list[dict]:
    return [r for r in store.latest("accounts", "uid") if r["uid"] == params["uid"]][:1]


READERS: list[tuple[str, Reader]] = [
    (r"FROM \S+\.agreed FINAL WHERE vid = \{vid:UUID\}", _agreements),
    (r"FROM \S+\.redirect_history\) AS changes", _link_version),
    (r"FROM \S+\.redirects AS r FINAL WHERE r\.deleted = 0 AND", _links_load),
    (r"SELECT DISTINCT host FROM \S+\.redirects FINAL", _link_hosts),
    (r"FROM \S+\.redirects AS r FINAL WHERE r\.urlfrom = \{key:String\}", _link),
    (r"FROM \S+\.accounts AS a FINAL WHERE a\.uid = \{uid:UUID\}", _account),
]


# -- the gateway in memory --------------------------------------------------------------------


@dataclass
class Response:
    """The answer as ``tests/gateway_process.Response`` has it (status, headers, body)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.body[:200]!r}>"


class _NoCookies(IndexableCookieJar):
    """Each request carries the cookies its test gives it, as in the real-process tests."""

    def extract_cookies(self, response, request):
        pass


@implementer(IBodyProducer)
class _Body:
    """The whole body at once (``StubTreq``'s way: no cooperator, no reactor)."""

    def __init__(self, body: bytes):
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer):
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


def site_client(site) -> tuple[HTTPClient, RequestTraversalAgent]:
    """A treq client speaking to a whole ``Site`` (ours: its request class, body caps, edge
    checks) over treq's in-memory connection, not to a bare resource in a plain ``Site``."""
    agent = RequestTraversalAgent(Resource())
    agent._serverFactory = site
    # Both provide the zope interfaces treq's annotations name (IAgent, IBodyProducer); mypy
    # cannot see zope's @implementer.
    client = HTTPClient(agent, cookiejar=_NoCookies(), data_to_body_producer=_Body)  # type: ignore[arg-type]
    return client, agent


class MemoryGateway:
    """The gateway's listeners' resource tree on a ``MemoryStore``: ``http()`` answers at once.

    ``overrides`` are config keys as in ``tests/gateway_process.GatewayProcess``.
    """

    def __init__(self, data_dir: Path, overrides: dict[str, Any] | None = None, store=None):
        from sfpltracker.config import load_dict
        from sfpltracker.gateway import Gateway
        from sfpltracker.service import build_front

        static = Path(__file__).resolve().parent.parent / "static"
        self.config = {
            "ProxyPortTLS": "",
            "DataDirectory": str(Path(data_dir) / "data"),
            "StaticDirectory": str(static),
            "Domains": ["localhost"],
            "Durability": "memory",  # the spool is tested on its own (tests/test_spool.py)
            **(overrides or {}),
        }
        self.cfg = load_dict(self.config)
        self.clock = MemoryReactorClock()
        self.clock.advance(time.time())  # rows get today's created_at, ids today's salt
        self.store = store if store is not None else MemoryStore(data_dir=Path(self.cfg.data_dir))
        self.gateway = Gateway(self.cfg, self.clock, store=self.store)
        self.root, self.edge = build_front(self.gateway, self.clock)
        self.site = self.edge.site()
        self.client, self.agent = site_client(self.site)
        # What a real process would log as a failure (the tests' "no Traceback in the log").
        self.failures: list[dict] = []
        # A plain callable is an observer (twisted.logger); the stubs want ILogObserver.
        globalLogPublisher.addObserver(self._observe)  # type: ignore[arg-type]
        self._result(self.gateway.start())

    def _observe(self, event: dict) -> None:
        if "log_failure" in event or event.get("log_level") in (LogLevel.error, LogLevel.critical):
            self.failures.append(event)

    def close(self) -> None:
        try:
            self._result(self.gateway.stop())
        finally:
            globalLogPublisher.removeObserver(self._observe)  # type: ignore[arg-type]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _result(self, d: defer.Deferred):
        """The result of a Deferred that must have fired (nothing here waits on anything)."""
        out: list = []
        d.addBoth(out.append)
        for _ in range(1000):  # each flush moves one round of bytes (a file is sent in chunks)
            if out:
                break
            self.agent.flush()
        if not out:
            raise AssertionError("the in-memory gateway did not answer (a thread or a socket?)")
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]

    def http(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str | bytes, str | bytes] | None = None,
        json_body: Any = None,
        host: str = "127.0.0.1",
    ) -> Response:
        sent: dict[str | bytes, str | bytes] = {"Host": host, **(headers or {})}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        d = self.client.request(
            method, f"http://127.0.0.1{path}", data=body, headers=sent, allow_redirects=False
        )
        response = self._result(d)
        content = self._result(response.content())
        pairs = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, values in response.headers.getAllRawHeaders()
            for v in values
        ]
        return Response(response.code, pairs, content)

    def rows(self, table: str = "events") -> list[dict]:
        """``table``'s rows once everything accepted went through the batcher."""
        self._result(self.gateway.batcher.flush_all())
        return self.store.rows(table)
