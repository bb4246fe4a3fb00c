"""The ClickHouse server (or cluster) store, over the native protocol with clickhouse-driver.

Threads: clickhouse-driver is blocking, so every call runs on this store's Twisted thread pool
(``deferToThreadPool``), never on the reactor. The pool has ``Connections`` threads and the
client pool as many clients (created on demand, reused, each with its own connection), so the
number of open connections is bounded by the config.

Hosts and failover: each client knows every host of ``Hosts``; clickhouse-driver connects to
the first that answers, in order, and stays there until that connection fails. Before each
query the driver pings its connection, so a server restart costs a reconnect, not an error.
A failure during an insert (connection lost, timeout, a server that is shutting down) is a
``StoreError``: the batcher retries the batch with ``dedup=True`` and its circuit breaker
stops hammering a dead cluster.

Rows as data: rows become typed columns (``columns.py``) sent with ``INSERT INTO t (cols)
VALUES`` in the native protocol's columnar blocks; nothing of a row is ever written into SQL.
Dedup: with ``dedup=True`` the keys of the batch go to the server as an external table
(``WHERE key IN _sfpl_keys``) and the stored ones are dropped first.

Dead letters: when the server rejects an insert for its data (a value it cannot parse, a
constraint, a failing view: the ``DATA_ERRORS`` codes, or any code that is not a known outage
while the server still answers ``SELECT 1``: ``rejects.refused_for_data``), the batch is split
in halves and each half inserted again, down to the single rows that fail, which go to the
dead-letter file with the server's reason (``deadletter.py``); every other row lands. Rows the
column converters already refuse are dead-lettered without being sent.

Schema: ``start()`` (and ``python -m sfpltracker schema``) checks the server's version against
the schema's ``requires:`` line, then runs the ``schema/`` statements; with ``Cluster`` set they
are rewritten for the cluster first (``cluster.py``) and inserts wait for the shards
(``insert_distributed_sync``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from twisted.internet import defer
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from sfpltracker.config import COMPRESSIONS
from sfpltracker.store.clickhouse import formats
from sfpltracker.store.clickhouse.cluster import check_cluster_name, cluster_statements
from sfpltracker.store.clickhouse.columns import Prepared, TableShape, prepare
from sfpltracker.store.clickhouse.legacy import LegacyDialect
from sfpltracker.store.deadletter import DeadLetters
from sfpltracker.store.dedup import drop_stored, keys_to_check
from sfpltracker.store.errors import StoreError
from sfpltracker.store.interface import Store
from sfpltracker.store.query_guard import QueryGuard, local_parser
from sfpltracker.store.rejects import (
    DataRejected,
    bisect,
    dead_letter_family,
    reason_classes,
    refused_for_data,
)
from sfpltracker.store.rejects import one_line as _reason
from sfpltracker.store.schema import (
    DEFAULT_DATABASE,
    JSON_BOUNDS,
    cluster_engine_changes,
    engine_changes,
    interrupted_rebuild,
    json_type_changes,
    load_statements,
    parse_version,
    required_version,
    schema_dir,
)

# clickhouse-driver logs every failed connect with a full traceback (dozens of lines a second
# while a server is down); this store logs one clear line per failure itself.
logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)

log = Logger()

DEFAULT_PORT, DEFAULT_SECURE_PORT = 9000, 9440
SCHEMA_TIMEOUT = 600.0  # ON CLUSTER DDL waits for every node

# clickhouse-driver failing to encode a value it was given (the block never reached the server).
CLIENT_DATA_ERRORS = (TypeError, ValueError, struct.error, OverflowError, AttributeError)


def parse_hosts(hosts: list[str], secure: bool) -> list[tuple[str, int]]:
    """``["a:9000", "[::1]:9440", "b"]`` -> [(host, port)]; the port defaults by ``secure``."""
    out = []
    for item in hosts:
        host, sep, port = item.strip().rpartition(":")
        if not sep or "]" in port or (host.count(":") and not host.startswith("[")):
            host, port = item.strip(), ""
        host = host.strip("[]")
        if not host or (port and not port.isdigit()):
            raise StoreError(f"Hosts: expected host:port, got {item!r}")
        out.append((host, int(port) if port else (DEFAULT_SECURE_PORT if secure else DEFAULT_PORT)))
    if not out:
        raise StoreError("Hosts: a clickhouse store needs at least one host:port")
    return out


@dataclass
class InsertOutcome:
    """What one insert did; logged and counted on the reactor thread."""

    stored: int = 0
    deduplicated: int = 0
    dead: list[tuple[dict, str, int]] = field(default_factory=list)
    host: str = ""
    shape_checked: bool = False


class ClientPool:
    """At most ``size`` clickhouse-driver clients, created on demand, one per running call."""

    def __init__(self, factory, size: int):
        self._factory = factory
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    @contextlib.contextmanager
    def client(self):
        self._slots.acquire()
        try:
            try:
                client = self._idle.get_nowait()
            except queue.Empty:
                client = self._factory()
            try:
                yield client
            finally:
                if self._closed:
                    _disconnect(client)
                else:
                    self._idle.put(client)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Disconnect the idle clients; one still in use is disconnected when it comes back."""
        self._closed = True
        while True:
            try:
                _disconnect(self._idle.get_nowait())
            except queue.Empty:
                return


def _disconnect(client) -> None:
    with contextlib.suppress(Exception):
        client.disconnect()


class ClickHouseStore:
    """A ``store.interface.Store``; not a ``TokenStore``: the oldest servers it serves (18.16)
    know no ``insert_deduplication_token``, so retried batches rely on ``dedup`` alone."""

    kind = "clickhouse"
    insert_tokens: Literal[False] = False

    def __init__(
        self,
        reactor,
        hosts: list[str],
        data_dir: Path,
        *,
        database: str = DEFAULT_DATABASE,
        username: str = "default",
        password: str = "",
        secure: bool = False,
        ca_cert: str = "",
        cert: str = "",
        key: str = "",
        compression: str = "",
        connections: int = 4,
        timeout: float = 10.0,
        cluster: str = "",
        critical: bool = False,
        schema_directory: Path | None = None,
    ):
        if compression not in COMPRESSIONS:
            raise StoreError(f"Compression: one of lz4, lz4hc, zstd or none, got {compression!r}")
        if not re.fullmatch(r"\w+", database):
            raise StoreError(f"Database: letters, digits and '_' only, got {database!r}")
        self.reactor = reactor
        self.tls = bool(secure or ca_cert)
        self.hosts = parse_hosts(hosts, self.tls)
        self.database = database
        self.guard = QueryGuard({database}, database)
        self.cluster = check_cluster_name(cluster) if cluster else ""
        self.critical = critical
        self.schema_directory = Path(schema_directory) if schema_directory else schema_dir()
        self.deadletters = DeadLetters(Path(data_dir) / "deadletter")
        self._client_options: dict[str, Any] = {
            "user": username,
            "password": password,
            "database": "default",  # sfpla may not exist before the schema is loaded
            "client_name": "sfpltracker",
            "connect_timeout": timeout,
            "send_receive_timeout": max(timeout, 30.0),
            "sync_request_timeout": min(timeout, 5.0),
            "compression": compression if compression not in ("", "none") else False,
            "settings": {"server_side_params": True},
        }
        if self.tls:
            self._client_options.update(
                secure=True, verify=True, ca_certs=ca_cert or None, certfile=cert or None
            )
            if key:
                self._client_options["keyfile"] = key
        size = max(1, connections)
        self.threads = ThreadPool(0, size, name="clickhouse")
        self.clients = ClientPool(self._new_client, size)
        self.shapes: dict[str, TableShape] = {}
        self.server_version = ""
        self.quote_64bit = False
        self.legacy: LegacyDialect | None = None  # reads adapted for a server older than 25.3
        self._schema_loaded = False
        self._rebuild_leftovers_checked = False
        self._schema_lock = threading.Lock()
        self._last_host = ""
        self._shutdown = None
        self.stats: dict[str, Counter] = {
            "dead_letters": Counter(),
            "deduplicated": Counter(),
            "host_changes": Counter(),
        }

    @classmethod
    def from_config(cls, entry, cfg, reactor) -> ClickHouseStore:
        """The store of a ``Notify`` entry of type ``clickhouse``."""
        database = entry.Database
        if database == DEFAULT_DATABASE:  # the default: an original config names it in Context
            database = entry.Context or DEFAULT_DATABASE

        def path(value: str) -> str:
            return str(cfg.path(value)) if value else ""

        return cls(
            reactor,
            entry.Hosts,
            cfg.data_dir,
            database=database,
            username=entry.Username,
            password=entry.Password,
            secure=entry.Secure,
            ca_cert=path(entry.CACert),
            cert=path(entry.Cert),
            key=path(entry.Key),
            compression=entry.Compression.lower(),
            connections=entry.Connections,
            timeout=entry.Timeout,
            cluster=entry.Cluster,
            critical=entry.Critical,
        )

    @property
    def where(self) -> str:
        return ", ".join(f"{h}:{p}" for h, p in self.hosts)

    def _new_client(self, **overrides):
        from clickhouse_driver import Client

        (host, port), rest = self.hosts[0], self.hosts[1:]
        options = dict(self._client_options, **overrides)
        if rest:
            options["alt_hosts"] = ",".join(
                f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in rest
            )
        return Client(host=host, port=port, **options)

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Connect and load the schema. With the servers unreachable, a non-``Critical`` store
        still starts (the schema loads with the first insert that gets through)."""
        self.threads.start()
        # Stop the threads with the reactor even if start() fails and stop() is never called.
        self._shutdown = self.reactor.addSystemEventTrigger(
            "during", "shutdown", self._stop_threads
        )
        d = self._run(self._load_schema)

        def loaded(count):
            log.info(
                "{server}: schema loaded ({count} statements{mode})",
                server=self.server_version,
                count=count,
                mode=f", cluster {self.cluster}" if self.cluster else "",
            )

        def unreachable(failure):
            failure.trap(StoreError)
            if self.critical or failure.value.code:
                return failure
            log.warn(
                "ClickHouse {hosts} unreachable ({why}); starting anyway, the schema loads "
                "when a server answers",
                hosts=self.where,
                why=failure.getErrorMessage(),
            )
            return None

        d.addCallbacks(loaded, unreachable)
        return d

    def stop(self) -> defer.Deferred:
        """Disconnect the idle clients and end the threads; fires once they have ended.
        ``ThreadPool.stop()`` joins the threads, so it runs on a thread of its own: a query in
        flight (a client's may run for ``QueryTimeoutSeconds``) ends on its thread while the
        reactor keeps serving, rather than holding the reactor until it does."""
        d = self._run(self.clients.close)

        def stop_threads(result):
            if self._shutdown is not None:
                self.reactor.removeSystemEventTrigger(self._shutdown)
                self._shutdown = None
            if not self.threads.started:
                return result
            return deferToThread(self.threads.stop).addBoth(lambda _: result)

        d.addBoth(stop_threads)
        return d

    def _stop_threads(self) -> None:
        """At reactor shutdown, for a store whose ``stop()`` never ran (a failed start): the
        reactor's own thread pool is being stopped then, so this joins here."""
        self._shutdown = None
        if self.threads.started:
            self.threads.stop()

    def _run(self, fn, *args) -> defer.Deferred:
        return deferToThreadPool(self.reactor, self.threads, fn, *args)

    # -- schema -----------------------------------------------------------------------------

    def load_schema(self) -> defer.Deferred:
        """Check the server version, run every schema statement (idempotent); fires with how
        many ran. ``server_version`` then says which server answered."""
        return self._run(self._load_schema)

    def statements(self):
        statements = load_statements(self.database, self.schema_directory)
        return cluster_statements(statements, self.cluster) if self.cluster else statements

    def _load_schema(self) -> int:
        client = self._new_client(send_receive_timeout=SCHEMA_TIMEOUT)
        try:
            version = self._call(client, "SELECT version()")[0][0]
            where = self._host_of(client)
            needed = required_version(self.schema_directory)
            if parse_version(version) < needed:
                raise StoreError(
                    f"ClickHouse {version} at {where} is too old for the schema in "
                    f"{self.schema_directory}: it needs ClickHouse "
                    f"{'.'.join(map(str, needed))} or newer (see the 'requires:' line of "
                    f"its files). Upgrade the server, or point Hosts at a newer one.",
                    code=-1,
                )
            statements = self.statements()
            for statement in statements:
                try:
                    self._call(client, statement.sql)
                except StoreError as e:
                    raise StoreError(f"schema {statement.file}: {e}", e.code or -1) from None
            if not self.cluster:
                self._change_engines(client, statements)
            else:  # a cluster's tables are rebuilt by its operator: say how
                self._tell_engine_changes(client, statements)
            self._read_shapes(client)
            self._bound_json_columns(client)
            quote = self._call(
                client,
                "SELECT value FROM system.settings "
                "WHERE name = 'output_format_json_quote_64bit_integers'",
            )
            self.quote_64bit = bool(quote) and quote[0][0] in ("1", "true")
            self.legacy = LegacyDialect.needed(
                parse_version(version), client.connection.server_info.revision
            )
            self.server_version = f"ClickHouse {version} at {where}"
            self._schema_loaded = True
            return len(statements)
        finally:
            client.disconnect()

    def _ensure_schema(self) -> None:
        if self._schema_loaded:
            return
        with self._schema_lock:
            if not self._schema_loaded:
                self._load_schema()

    def _change_engines(self, client, statements) -> None:
        """Rebuild a table an older schema made with an engine the schema changed since
        (``engine_changes``: redirect_history, MergeTree -> ReplacingMergeTree)."""
        rows = self._call(
            client, f"SELECT name, engine FROM system.tables WHERE database = '{self.database}'"
        )
        for statement in engine_changes(statements, dict(rows), self.database):
            log.info("store: {sql}", sql=statement.sql.splitlines()[0])
            try:
                self._call(client, statement.sql)
            except StoreError as e:
                raise StoreError(f"schema: {statement.sql}: {e}", e.code or -1) from None
        if not self._rebuild_leftovers_checked:  # only at start: a reload may run beside one
            self._rebuild_leftovers_checked = True
            for sql in interrupted_rebuild(self.database, dict(rows)):
                log.warn("store: undoing an interrupted dashboard rebuild: {sql}", sql=sql)
                self._call(client, sql)

    def _tell_engine_changes(self, client, statements) -> None:
        """A cluster table made by an older schema with an engine since changed: a warning at
        every start with the statements that rebuild it (docs/clickhouse.md)."""
        rows = self._call(
            client, f"SELECT name, engine FROM system.tables WHERE database = '{self.database}'"
        )
        changes = cluster_engine_changes(statements, dict(rows), self.database, self.cluster)
        for table, steps in changes.items():
            log.warn(
                "store: {table} has the engine of an older schema ({engine}); not converted on "
                "a cluster (e.g. redirect_history refuses FINAL until it is). Stop the gateways "
                "and run (docs/clickhouse.md, 'Engine changes on a cluster'):\n{steps}",
                table=f"{self.database}.{table}",
                engine=dict(rows)[table],
                steps=";\n".join(step.strip() for step in steps) + ";",
            )

    def _bound_json_columns(self, client) -> None:
        """Bring JSON columns of tables an older schema created to the declared (bounded) type
        (docs/resources.md); on a cluster ON CLUSTER, on the local and the Distributed table."""
        stored = {(t, c): ty for t, shape in self.shapes.items() for c, ty in shape.columns.items()}
        declared = load_statements(self.database, self.schema_directory)
        changes = json_type_changes(declared, stored, self.database)
        if changes and self.cluster:
            # Rewritten among the tables' statements, so the ALTERs know which are split
            # into a Replicated <t>_local and a Distributed <t>.
            changes = [
                s
                for s in cluster_statements(declared + changes, self.cluster)
                if s.file == JSON_BOUNDS
            ]
        for statement in changes:
            log.info("store: {sql}", sql=statement.sql)
            try:
                self._call(client, statement.sql)
            except StoreError as e:
                raise StoreError(f"schema: {statement.sql}: {e}", e.code or -1) from None
        if changes:
            self._read_shapes(client)

    def _read_shapes(self, client) -> None:
        rows = self._call(
            client,
            "SELECT table, name, type, default_kind FROM system.columns "
            f"WHERE database = '{self.database}'",  # in column order (18.16 has no position)
        )
        columns: dict[str, dict[str, str]] = {}
        defaults: dict[str, set[str]] = {}
        for table, name, ch_type, default_kind in rows:
            if default_kind in ("MATERIALIZED", "ALIAS"):
                continue
            columns.setdefault(table, {})[name] = ch_type
            if default_kind == "DEFAULT":
                defaults.setdefault(table, set()).add(name)
        self.shapes = {
            t: TableShape(cols, frozenset(defaults.get(t, ()))) for t, cols in columns.items()
        }

    # -- driver calls -----------------------------------------------------------------------

    def _call(self, client, sql: str, params=None, **kw):
        """``client.execute`` with driver and server errors turned into ``StoreError``s, and
        data errors into ``DataRejected``."""
        from clickhouse_driver import errors

        try:
            result = client.execute(sql, params, **kw)
            client.sfpl_last_host = self._host_of(client)
            return result
        except errors.ServerException as e:
            if kw.get("columnar") and refused_for_data(
                e.code, str(e), lambda: self._answers(client)
            ):
                raise DataRejected(_reason(e), e.code) from None
            raise StoreError(_reason(e), e.code) from None
        except (
            errors.TypeMismatchError,
            errors.CannotParseUuidError,
            errors.CannotParseDomainError,
        ) as e:
            if kw.get("columnar"):
                raise DataRejected(f"not sent: {_reason(e)}", 0) from None
            raise StoreError(_reason(e)) from None
        except (errors.Error, OSError, EOFError) as e:
            raise StoreError(f"ClickHouse {self.where}: {_reason(e)}") from None
        except CLIENT_DATA_ERRORS as e:
            if kw.get("columnar"):
                raise DataRejected(f"not sent: {type(e).__name__}: {e}", 0) from None
            raise

    def _answers(self, client) -> bool:
        """The probe after an insert was refused with an error no list names: the server
        answers ``SELECT 1`` on the same client (which reconnects to the same hosts)."""
        try:
            self._call(client, "SELECT 1")
        except StoreError as e:
            log.warn("ClickHouse fails its probe ({why}): retrying", why=str(e))
            return False
        return True

    @staticmethod
    def _host_of(client) -> str:
        """The host the client is connected to, else the one of its last successful call (the
        driver forgets the host when an error closes the connection)."""
        connection = client.connection
        if connection.connected and connection.host:
            return f"{connection.host}:{connection.port}"
        return getattr(client, "sfpl_last_host", "")

    # -- writes -----------------------------------------------------------------------------

    def insert(
        self, table: str, rows: list[dict], dedup: bool = False, token: str | None = None
    ) -> defer.Deferred:
        """Insert rows; fires with how many landed. With ``dedup`` rows whose key is stored are
        skipped first; rows the server rejects for their data go to the dead-letter file.
        ``token`` is taken for the common contract and not sent (``insert_tokens`` is False:
        callers ask before relying on it)."""
        d = self._run(self._insert, table, rows, dedup)
        d.addCallback(self._settle, table)
        return d

    def _settle(self, outcome: InsertOutcome, table: str) -> int:
        """On the reactor thread: log and count what the insert did."""
        if outcome.host and outcome.host != self._last_host:
            if self._last_host:
                log.warn(
                    "ClickHouse: now writing to {host} (was {old})",
                    host=outcome.host,
                    old=self._last_host,
                )
                self.stats["host_changes"][outcome.host] += 1
            self._last_host = outcome.host
        if outcome.deduplicated:
            self.stats["deduplicated"][table] += outcome.deduplicated
        if outcome.dead:
            self.stats["dead_letters"][table] += len(outcome.dead)
            # The class of the reason only: the server's message quotes the refused value.
            log.error(
                "ClickHouse refused {n} row(s) of {table} for their data ({reason}); "
                "kept the refused in {path}",
                n=len(outcome.dead),
                table=table,
                reason=reason_classes(outcome.dead),
                path=str(self.deadletters.path(table)),
            )
        return outcome.stored

    def _insert(self, table: str, rows: list[dict], dedup: bool) -> InsertOutcome:
        self._ensure_schema()
        outcome = InsertOutcome()
        with self.clients.client() as client:
            shape = self._shape(client, table)
            self._insert_rows(client, table, shape, rows, dedup, outcome)
            outcome.host = self._host_of(client)
        # Only once the whole batch is settled: when a later part fails (connection lost) the
        # batcher retries it with dedup and the same rows are found bad again.
        self.deadletters.append(table, outcome.dead, outcome.host)
        return outcome

    def _shape(self, client, table: str) -> TableShape:
        shape = self.shapes.get(table)
        if shape is None:
            self._read_shapes(client)  # a table created since the schema was loaded
            shape = self.shapes.get(table)
        if shape is None:
            raise StoreError(f"no table {self.database}.{table}", 60)
        return shape

    def _insert_rows(
        self, client, table: str, shape: TableShape, rows: list[dict], dedup: bool, outcome
    ) -> None:
        if dedup:
            before = len(rows)
            rows = self._without_stored(client, table, shape, rows)
            outcome.deduplicated += before - len(rows)
        if not rows:
            return
        prepared: Prepared = prepare(shape, rows)
        outcome.dead.extend((row, f"not sent: {why}", 0) for row, why in prepared.rejected)
        for block in prepared.blocks:
            try:
                self._send(client, table, block.names, block.columns)
                outcome.stored += len(block.rows)
            except DataRejected as e:
                self._check_shape(client, table, shape, outcome)
                self._bisect(client, table, shape, block.rows, e, outcome)

    def _check_shape(self, client, table: str, shape: TableShape, outcome) -> None:
        """Before blaming rows, make sure the table is still what they were converted for:
        an ALTER since the columns were read would make every row "bad". Then the batch is
        retried (a ``StoreError``) with the columns as they are now."""
        if outcome.shape_checked:
            return
        outcome.shape_checked = True
        self._read_shapes(client)
        if self.shapes.get(table) != shape:
            raise StoreError(f"the columns of {self.database}.{table} changed; retrying the batch")

    def _bisect(self, client, table, shape, rows: list[dict], error: DataRejected, outcome):
        """Find the rows the server rejects: halves are inserted again (with dedup: a failing
        view may leave the table's part of a rejected insert behind), down to single rows."""
        bisect(
            rows,
            error,
            lambda half, _label: self._insert_rows(client, table, shape, half, True, outcome),
            outcome.dead,
        )

    def _send(self, client, table: str, names: list[str], columns: list[list]) -> None:
        column_list = ", ".join(f"`{n}`" for n in names)
        settings = {"insert_distributed_sync": 1} if self.cluster else None
        self._call(
            client,
            f"INSERT INTO `{self.database}`.`{table}` ({column_list}) VALUES",
            columns,
            columnar=True,
            settings=settings,
        )

    def without_stored(self, table: str, rows: list[dict]) -> defer.Deferred:
        """The rows whose dedup key is not stored yet (all of them for a table without one)."""

        def check() -> list[dict]:
            self._ensure_schema()
            with self.clients.client() as client:
                return self._without_stored(client, table, self._shape(client, table), rows)

        return self._run(check)

    def _without_stored(self, client, table: str, shape: TableShape, rows: list[dict]):
        key, wanted = keys_to_check(table, rows)
        if not wanted or key not in shape.columns:
            return rows
        key_type = shape.types[key]
        valid = []
        for k in wanted:  # a malformed key cannot be stored; prepare() rejects its row
            with contextlib.suppress(Exception):
                valid.append(key_type.convert(k))
        if not valid:
            return rows
        spec = shape.columns[key]
        for wrapper in ("LowCardinality(", "SimpleAggregateFunction("):
            if spec.startswith(wrapper):
                spec = spec[len(wrapper) : -1].split(",")[-1].strip()
        found = self._call(
            client,
            f"SELECT toString(`{key}`) FROM `{self.database}`.`{table}` WHERE `{key}` IN _sfpl_keys",
            external_tables=[
                {
                    "name": "_sfpl_keys",
                    "structure": [("k", spec)],
                    "data": [{"k": v} for v in valid],
                }
            ],
            settings={"max_query_size": 1024 * 1024},
        )
        return drop_stored(rows, key, {str(k).lower() for (k,) in found})

    # -- reads and statements ------------------------------------------------------------------

    def query(
        self,
        sql: str,
        fmt: str = "JSONEachRow",
        params: dict[str, Any] | None = None,
        database: str | None = None,
    ) -> defer.Deferred:
        """A read-only query (``readonly = 1`` on the server); fires with ``fmt`` bytes.
        ``params`` bind ``{name:Type}`` placeholders on the server (any server the schema
        accepts; on an older one, with a schema downgraded for it, ``legacy.py`` binds them)."""
        if self.legacy is not None:
            sql, params = self.legacy.adapt(sql, params)
        return self._run(self._read, sql, fmt, params, database)

    def user_query(
        self, sql: str, fmt: str, database: str | None = None, limits=None
    ) -> defer.Deferred:
        """A query of the query listener: checked by ``query_guard`` (with chDB's parser, in
        this process) and run with ``readonly = 1``, both on a store thread; fires with
        ``(format, bytes)``. ``QueryRefused`` if not allowed."""

        def run():
            checked = self.guard.check(local_parser(), sql, database)
            out = checked.fmt or fmt
            # Run as checked: not rewritten for an old server (legacy.adapt edits text).
            return out, self._read(checked.sql, out, None, checked.database, limits)

        return self._run(run)

    def _read(self, sql: str, fmt: str, params, database: str | None, limits=None) -> bytes:
        began = time.monotonic()
        with self.clients.client() as client:
            rows, columns = self._in_database(
                client,
                database,
                sql,
                params,
                with_column_types=True,
                # The limits before readonly, which locks settings once applied.
                settings={**(limits or {}), "readonly": 1},
            )
            last = client.last_query
            progress = last.progress if last else None
            profile = last.profile_info if last else None
        stats = {
            "elapsed": round(time.monotonic() - began, 9),
            "rows_read": getattr(progress, "rows", 0),
            "bytes_read": getattr(progress, "bytes", 0),
        }
        try:
            return formats.render(
                fmt,
                rows,
                columns,
                quote_64bit=self.quote_64bit,
                statistics=stats,
                rows_before_limit=profile.rows_before_limit
                if profile is not None and profile.calculated_rows_before_limit
                else None,
            )
        except formats.UnsupportedFormat as e:
            raise StoreError(str(e), e.code) from None

    def _in_database(self, client, database: str | None, sql: str, params=None, **kw):
        if not database or database == "default":
            return self._call(client, sql, params or None, **kw)
        self._call(client, f"USE `{database.replace('`', '')}`")
        try:
            return self._call(client, sql, params or None, **kw)
        finally:
            with contextlib.suppress(StoreError):
                self._call(client, "USE default")

    def execute(self, sql: str) -> defer.Deferred:
        """A statement (maintenance, tests); fires with its result as TabSeparated bytes."""

        def run():
            with self.clients.client() as client:
                rows, columns = self._call(client, sql, with_column_types=True)
            return formats.render("TabSeparated", rows, columns) if columns else b""

        return self._run(run)

    def ping(self) -> defer.Deferred:
        return self.execute("SELECT 1")

    # -- numbers ----------------------------------------------------------------------------

    def metric_families(self):
        """Prometheus families (read by ``/metrics`` through ``Gateway.metric_sources``)."""
        from prometheus_client.core import CounterMetricFamily

        yield dead_letter_family(self.stats["dead_letters"])
        dedup = CounterMetricFamily(
            "sfpl_store_rows_deduplicated",
            "Rows of retried batches skipped because they were already stored",
            labels=["table"],
        )
        for table, n in sorted(self.stats["deduplicated"].items()):
            dedup.add_metric([table], n)
        yield dedup
        moves = CounterMetricFamily(
            "sfpl_clickhouse_host_changes",
            "Times the store moved its writes to another of Hosts",
            labels=["host"],
        )
        for host, n in sorted(self.stats["host_changes"].items()):
            moves.add_metric([host], n)
        yield moves


if TYPE_CHECKING:  # mypy checks the contract this store keeps (store/interface.py)

    def _contract(store: ClickHouseStore) -> Store:
        return store
