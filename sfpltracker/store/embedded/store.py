"""The embedded store: chDB (ClickHouse in-process) in ``DataDirectory/chdb``.

All writes go through one writer thread (chDB lets one process open a data directory; one
writer keeps inserts in order). Reads run on a small pool of reader threads, each with its own
read-only chDB connection (``readonly = 1``: no writes, no settings changes), so a slow
dashboard query never delays inserts. The query listener's queries are first checked on the
reader thread by ``query_guard`` (``user_query``). Rows are handed to
ClickHouse as an Arrow table (``INSERT ... SELECT * FROM Python(batch)``), never as SQL text.

Half-stored batches: an insert commits the source table's part, then each materialized view's
part. ``insert(..., token=)`` sends the batch with ``insert_deduplication_token`` and
``deduplicate_blocks_in_dependent_materialized_views``: sent again with the same token, parts
that landed are skipped and the missing ones written (chDB honours the token for ``INSERT ...
SELECT FROM Python()``; ``tests/test_store_tokens.py`` shows it). For that every table that
receives rows keeps a deduplication window (``non_replicated_deduplication_window``): the
schema sets it, ``_ensure_dedup_windows`` adds it to view targets created before it did.

Rows chDB refuses for their data (JSON it cannot parse, a value Arrow cannot convert, a
params value whose JSON types make ``TOO_DEEP_AST``: see docs/durability.md "A row the store
can never accept") would fail their batch on every attempt and hold back the spool behind it.
An error that is neither a known data error nor a known outage makes the store probe itself
(``_answers``: a query, and a file written in every table directory); if chDB passes, the rows
are to blame. The insert then searches the batch by halves
(``rejects.bisect``, as the server store does), stores every other row and sets the refused
ones aside in ``DataDirectory/deadletter/<table>.jsonl``. Each half gets an insert token
derived from the batch's token and its place in the search, so a batch re-sent after a crash
(same rows, same token) is searched the same way and only its missing parts are written.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode
from xml.sax.saxutils import escape

import pyarrow as pa
from twisted.internet import defer
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from sfpltracker.fsutil import write_atomic
from sfpltracker.store.deadletter import DeadLetters
from sfpltracker.store.dedup import DEDUP_KEYS, drop_stored, keys_to_check
from sfpltracker.store.embedded.dedup_logs import repair_if_unused
from sfpltracker.store.errors import StoreError
from sfpltracker.store.interface import SerialStore, Store, SyncingStore, TokenStore
from sfpltracker.store.query_guard import QueryGuard
from sfpltracker.store.rejects import (
    DataRejected,
    Dead,
    bisect,
    dead_letter_family,
    one_line,
    reason_classes,
    refused_for_data,
)
from sfpltracker.store.schema import (
    DEFAULT_DATABASE,
    engine_changes,
    interrupted_rebuild,
    json_type_changes,
    load_statements,
)

__all__ = ["DEDUP_KEYS", "EmbeddedStore", "StoreError"]

log = Logger()

DEDUP_WINDOW = 1000  # blocks per table whose token (or checksum) ClickHouse remembers
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_VIEW_TARGET = re.compile(r"\bTO\s+`?(\w+)`?\.`?(\w+)`?", re.IGNORECASE)
# Arrow refusing a row's value (a str in an Int64 column, a lone surrogate, an int past 64
# bits): pa.ArrowInvalid is a ValueError, pa.ArrowTypeError a TypeError.
ARROW_DATA_ERRORS = (ValueError, TypeError, OverflowError)
# chDB errors meaning the table is not what ``columns`` says (an ALTER or DROP since it was
# read): NOT_FOUND_COLUMN_IN_BLOCK, NO_SUCH_COLUMN_IN_TABLE, UNKNOWN_IDENTIFIER, UNKNOWN_TABLE.
SCHEMA_CHANGED = frozenset({10, 16, 47, 60})
MAX_REASON = 500  # characters of chDB's message kept (it may quote a whole JSON value)

MIB = 1024 * 1024
# Resource budget of the chDB engine inside the gateway process (docs/resources.md). ClickHouse
# sizes its defaults for a server of its own (caches of 5 GiB, 90% of RAM for queries); here it
# shares the process with Python, so every cache and the engine as a whole get a bound. These
# are server settings: the store writes them to DataDirectory/chdb-config.xml and the first
# connection of the process opens the engine with that file.
SERVER_SETTINGS = {
    # Allocations the engine tracks (queries, inserts, merges, caches) stop at this: a query
    # or insert past it fails with MEMORY_LIMIT_EXCEEDED (the batcher retries the insert).
    "max_server_memory_usage": 192 * MIB,
    # No new merge starts while merges hold more than this.
    "merges_mutations_memory_usage_soft_limit": 64 * MIB,
    "mark_cache_size": 32 * MIB,
    "index_mark_cache_size": 8 * MIB,
    "primary_index_cache_size": 32 * MIB,
    "uncompressed_cache_size": 0,
    "index_uncompressed_cache_size": 0,
    "query_condition_cache_size": 8 * MIB,
    "compiled_expression_cache_size": 16 * MIB,
    # Two merge threads (two descriptor sets of the parts being merged at a time).
    "background_pool_size": 2,
}
# Defaults of every MergeTree table (existing ones too, unless a table sets its own).
MERGE_TREE_SETTINGS = {
    # JSON paths past a column's max_dynamic_paths live in its "shared data". ClickHouse's
    # default serialization of it in merged parts ("advanced": an index per path) made one
    # merge of six 500-row parts of random keys take ~900 MB; as a plain Map it took 12 MB
    # (docs/resources.md). A path read from the shared data then reads the whole Map.
    "object_shared_data_serialization_version": "map",
    "object_shared_data_serialization_version_for_zero_level_parts": "map",
    # Merges go column by column (vertical): a merge holds one column's files and write
    # buffers at a time, not those of every column and subcolumn of the part.
    "vertical_merge_algorithm_min_rows_to_activate": 1,
    "vertical_merge_algorithm_min_columns_to_activate": 1,
    # Each stream being written holds a block this big (was 1 MiB): a wide part of a few
    # hundred subcolumn streams held that many MiB while written.
    "max_compress_block_size": 64 * 1024,
    # Rows a merge reads and writes at a time (was 8,192): events with large params objects
    # made a block of tens of MB.
    "merge_max_block_size": 1024,
}
# Per query of a reader connection (the query listener, dashboards): one query cannot take
# the engine's whole budget away from inserts.
READER_SETTINGS = {"max_memory_usage": 96 * MIB, "max_threads": 2}


def _arrow_type(ch_type: str) -> pa.DataType:
    t = ch_type
    for wrapper in ("LowCardinality(", "Nullable("):
        while t.startswith(wrapper):
            t = t[len(wrapper) : -1]
    if t.startswith("DateTime"):
        return pa.timestamp("ms", tz="UTC")
    if t.startswith(("Int", "UInt")):
        return pa.int64()
    if t.startswith(("Float", "Decimal")):
        return pa.float64()
    if t == "Bool":
        return pa.bool_()
    if t.startswith("Array("):
        return pa.list_(_arrow_type(t[6:-1]))
    return pa.string()  # String, UUID, JSON, FixedString, Enum, IPv4/6, Date as text


def to_arrow(rows: list[dict], columns: dict[str, str]) -> tuple[pa.Table, list[str]]:
    """Columnar Arrow data for ``rows``; only columns some row sets, missing values -> default."""
    keys = set().union(*rows)  # one pass in C, not a scan of the rows per column
    present = [c for c in columns if c in keys]
    arrays = []
    for name in present:
        values = [r.get(name) for r in rows]
        arrays.append(pa.array(values, type=_arrow_type(columns[name])))
    return pa.Table.from_arrays(arrays, names=present), present


def _reason(error: StoreError) -> str:
    """chDB's message for a refused row, without the pipeline it ran in, at most MAX_REASON."""
    text = one_line(error)
    for cut in (": while converting source column", ": while executing"):
        if cut in text:
            text = text[: text.index(cut)] + "."
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


@dataclass
class InsertOutcome:
    """What one insert did; counted and logged on the reactor thread."""

    stored: int = 0
    dead: Dead = field(default_factory=list)


def _error(exc: Exception) -> StoreError:
    text = str(exc)
    code = 0
    if text.startswith("Code: "):
        try:
            code = int(text[6 : text.index(".")])
        except ValueError:
            code = 0
    return StoreError(text, code)


class EmbeddedStore:
    """A ``store.interface.Store``, a ``TokenStore``, a ``SyncingStore`` and a ``SerialStore``."""

    kind = "embedded"
    insert_tokens: Literal[True] = True  # insert(token=) re-sends a batch idempotently
    cluster = ""  # one process, no cluster
    server_version = ""  # no server to name

    def __init__(self, data_dir: Path, reactor, database: str = DEFAULT_DATABASE, readers: int = 2):
        self.path = Path(data_dir) / "chdb"
        self.reactor = reactor
        self.database = database
        self.writer_pool = ThreadPool(1, 1, name="chdb-writer")
        self.reader_pool = ThreadPool(1, readers, name="chdb-reader")
        self.columns: dict[str, dict[str, str]] = {}
        self._writer: Any = None  # chdb's connection, opened on the writer thread
        self._local = threading.local()
        # Every reader session (each reader thread opens its own), closed by stop(); and the
        # reads in flight, which stop() cancels rather than waits for.
        self._sessions: list[Any] = []
        self._reads_lock = threading.Lock()
        self._reads_running = 0
        self._stopping = False
        self._inserts = 0
        self._rebuild_leftovers_checked = False
        self.deadletters = DeadLetters(Path(data_dir) / "deadletter")
        self.stats: dict[str, Counter] = {"dead_letters": Counter()}
        self.guard = QueryGuard({database}, database)

    @property
    def where(self) -> str:
        return str(self.path)

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        self.writer_pool.start()
        self.reader_pool.start()
        return self._on_writer(self._open_and_load)

    def stop(self) -> defer.Deferred:
        """Cancel the reads in flight, end the reader threads, close every session.

        A client query may run for ``QueryTimeoutSeconds``; stopping waits for none: it is
        cancelled (``KILL QUERY``, the client gets ClickHouse's QUERY_WAS_CANCELLED), a read
        queued behind it is refused, and no reader session or thread is left behind.
        """
        with self._reads_lock:
            self._stopping = True
        d = self._on_writer(self._cancel_reads)
        # ThreadPool.stop() joins its threads: off the reactor thread.
        d.addBoth(lambda _: deferToThread(self.reader_pool.stop))
        d.addBoth(lambda _: self._on_writer(self._close_sessions))

        def stop_writer(result):
            self.writer_pool.stop()
            return result

        d.addBoth(stop_writer)
        return d

    def _cancel_reads(self) -> None:
        """On the writer thread: cancel every read running, until none is (a read that was
        just starting when one KILL ran is caught by the next)."""
        while self._writer is not None:
            with self._reads_lock:
                if not self._reads_running:
                    return
            try:
                self._writer.query("KILL QUERY WHERE 1 SYNC")
            except Exception as e:  # noqa: BLE001 - the reads then end at their own limits
                log.warn("store: cancelling reads failed ({why})", why=one_line(e))
                return
            time.sleep(0.01)

    def _close_sessions(self) -> None:
        """On the writer thread, once the reader threads are gone: their sessions, then the
        writer's (the engine closes with its last session)."""
        for conn in [*self._sessions, self._writer]:
            if conn is None:
                continue
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._sessions.clear()
        self._local = threading.local()
        self._writer = None

    def _open_and_load(self) -> None:
        import chdb

        self.path.mkdir(parents=True, exist_ok=True)
        # Before chDB reads them: block ids of parts a crash kept from landing would make a
        # re-send of their batch skip those parts (store/embedded/dedup_logs.py).
        repair_if_unused(self.path)
        try:
            config = write_chdb_config(self.path.parent / CONFIG_FILE)
            self._writer = chdb.connect(chdb_connection_string(self.path, config=config))
        except Exception as e:
            hint = ""
            if "lock" in str(e).lower():
                hint = " (another process - a running gateway? - has it open)"
            raise StoreError(f"cannot open the embedded store at {self.path}{hint}: {e}") from None
        self._load_schema()

    def load_schema(self) -> defer.Deferred:
        """Run every schema statement again (idempotent); fires with how many ran."""
        return self._on_writer(self._load_schema)

    def _load_schema(self) -> int:
        statements = load_statements(self.database)
        for statement in statements:
            try:
                self._writer.query(statement.sql)
            except Exception as e:
                raise StoreError(f"schema {statement.file}: {e}") from None
        self._change_engines(statements)
        self._ensure_dedup_windows()
        self._read_columns()
        self._bound_json_columns(statements)
        return len(statements)

    def _change_engines(self, statements) -> None:
        """Rebuild a table an older schema made with an engine the schema changed since
        (``engine_changes``: redirect_history, MergeTree -> ReplacingMergeTree)."""
        raw = self._writer.query(
            "SELECT name, engine FROM system.tables WHERE database = {db:String}",
            "TabSeparated",
            params={"db": self.database},
        )
        stored = dict(line.split("\t", 1) for line in raw.bytes().decode().splitlines() if line)
        for statement in engine_changes(statements, stored, self.database):
            log.info("store: {sql}", sql=statement.sql.splitlines()[0])
            try:
                self._writer.query(statement.sql)
            except Exception as e:
                raise StoreError(f"schema: {statement.sql}: {e}") from None
        if not self._rebuild_leftovers_checked:  # only at start: a reload may run beside one
            self._rebuild_leftovers_checked = True
            for sql in interrupted_rebuild(self.database, stored):
                log.warn("store: undoing an interrupted dashboard rebuild: {sql}", sql=sql)
                self._writer.query(sql)

    def _bound_json_columns(self, statements) -> None:
        """Bring JSON columns of tables an older schema created to the declared (bounded) type:
        ``CREATE TABLE IF NOT EXISTS`` does not change an existing table (docs/resources.md)."""
        stored = {(t, c): ty for t, cols in self.columns.items() for c, ty in cols.items()}
        changes = json_type_changes(statements, stored, self.database)
        for statement in changes:
            log.info("store: {sql}", sql=statement.sql)
            try:
                self._writer.query(statement.sql)
            except Exception as e:
                raise StoreError(f"schema: {statement.sql}: {e}") from None
        if changes:
            self._read_columns()

    def _ensure_dedup_windows(self) -> None:
        """Give every materialized view's target table a deduplication window (a table made
        before the schema set one has none, and a re-sent batch would be counted twice)."""
        views = self._writer.query(
            "SELECT create_table_query FROM system.tables "
            "WHERE database = {db:String} AND engine = 'MaterializedView'",
            "TabSeparated",
            params={"db": self.database},
        )
        targets = set()
        for line in views.bytes().decode().splitlines():
            m = _VIEW_TARGET.search(line)
            if m and m.group(1) == self.database:
                targets.add(m.group(2))
        if not targets:
            return
        tables = self._writer.query(
            "SELECT name, engine, engine_full FROM system.tables WHERE database = {db:String}",
            "TabSeparated",
            params={"db": self.database},
        )
        for line in tables.bytes().decode().splitlines():
            name, engine, engine_full = line.split("\t", 2)
            if (
                name in targets
                and engine.endswith("MergeTree")
                and "non_replicated_deduplication_window" not in engine_full
            ):
                log.info("store: {table} gets a deduplication window", table=name)
                self._writer.query(
                    f"ALTER TABLE {self.database}.`{name}` "
                    f"MODIFY SETTING non_replicated_deduplication_window = {DEDUP_WINDOW}"
                )

    def _read_columns(self) -> None:
        result = self._writer.query(
            "SELECT table, name, type FROM system.columns WHERE database = {db:String} "
            "AND default_kind NOT IN ('MATERIALIZED', 'ALIAS') ORDER BY table, position",
            "TabSeparated",
            params={"db": self.database},
        )
        columns: dict[str, dict[str, str]] = {}
        for line in result.bytes().decode().splitlines():
            table, name, ch_type = line.split("\t")
            columns.setdefault(table, {})[name] = ch_type
        self.columns = columns

    # -- threads ----------------------------------------------------------------------------

    def _on_writer(self, fn, *args) -> defer.Deferred:
        return deferToThreadPool(self.reactor, self.writer_pool, fn, *args)

    def _reader(self, limits=None):
        """This reader thread's session; with ``limits``, its session for client queries."""
        name = "conn" if not limits else "user_conn"
        conn = getattr(self._local, name, None)
        if conn is None:
            import chdb

            settings = {**READER_SETTINGS, **(limits or {})}
            conn = chdb.connect(chdb_connection_string(self.path, settings=settings))
            # Defence in depth behind query_guard, for this session only (the writer's
            # inserts use Python()): no Python() table function (it reads this process's
            # Python objects by name, DESCRIBE even under readonly), no introspection
            # functions (on by default in chDB); then readonly, which locks both.
            conn.query("SET allow_python_table_function = 0")
            conn.query("SET allow_introspection_functions = 0")
            conn.query("SET readonly = 1")
            setattr(self._local, name, conn)
            with self._reads_lock:
                self._sessions.append(conn)
        return conn

    def _on_reader(self, fn) -> defer.Deferred:
        """Run ``fn()`` (a read) on a reader thread, counted so stop() can cancel it."""

        def counted():
            with self._reads_lock:
                if self._stopping:
                    raise StoreError("the store is stopping", 394)
                self._reads_running += 1
            try:
                return fn()
            finally:
                with self._reads_lock:
                    self._reads_running -= 1

        return deferToThreadPool(self.reactor, self.reader_pool, counted)

    # -- writes -----------------------------------------------------------------------------

    def insert(
        self, table: str, rows: list[dict], dedup: bool = False, token: str | None = None
    ) -> defer.Deferred:
        """Insert rows; with ``dedup`` rows whose key is already stored are skipped first.

        ``dedup`` is set for replays, where an earlier attempt may have landed. ``token``
        (``insert_deduplication_token``) instead makes the insert idempotent as a whole: sent
        again with the same token and the same rows, what an earlier attempt stored - the
        source part, any view's part - is skipped and only the missing parts are written.
        """
        if token is not None and not _TOKEN.match(token):
            return defer.fail(StoreError(f"bad insert token {token!r}"))
        d = self._on_writer(self._insert, table, rows, dedup, token)
        d.addCallback(self._settle, table)
        return d

    def _settle(self, outcome: InsertOutcome, table: str) -> int:
        """On the reactor thread: count and log the rows set aside; fire with those stored."""
        if outcome.dead:
            self.stats["dead_letters"][table] += len(outcome.dead)
            # The class of the reason only: chDB's message quotes the refused value.
            log.error(
                "store: chDB refused {n} row(s) of {table} for their data ({reason}); "
                "stored the other {stored}, kept the refused in {path}",
                n=len(outcome.dead),
                table=table,
                reason=reason_classes(outcome.dead),
                stored=outcome.stored,
                path=str(self.deadletters.path(table)),
            )
        return outcome.stored

    def _insert(
        self, table: str, rows: list[dict], dedup: bool, token: str | None
    ) -> InsertOutcome:
        columns = self.columns.get(table)
        if columns is None:
            raise StoreError(f"no table {self.database}.{table}", 60)
        if dedup and token is None:
            rows = self._without_stored(table, rows)
        outcome = InsertOutcome()
        if not rows:
            return outcome
        try:
            self._send(table, columns, rows, token)
            outcome.stored = len(rows)
            return outcome
        except DataRejected as e:
            self._check_columns(table, columns)
            refused = e

        def again(half: list[dict], label: str) -> None:
            if token is not None:
                # Same rows, same place in the search -> same token: a re-send skips it.
                self._send(table, columns, half, f"{token}-{label}")
            else:
                half = self._without_stored(table, half)
                if half:
                    self._send(table, columns, half, None)
            outcome.stored += len(half)

        bisect(rows, refused, again, outcome.dead)
        # Appended (and fsynced) only once the whole batch is settled: if a later half fails
        # for the store's sake, the batch is retried whole and the same rows are found again.
        self.deadletters.append(table, outcome.dead, "embedded")
        return outcome

    def _send(self, table: str, columns: dict[str, str], rows: list[dict], token) -> None:
        """One INSERT; ``DataRejected`` when chDB or Arrow refuses the rows' values."""
        try:
            batch, names = to_arrow(rows, columns)  # noqa: F841 - read by name in the SQL below
        except ARROW_DATA_ERRORS as e:
            raise DataRejected(f"not sent: {type(e).__name__}: {e}"[:MAX_REASON], 0) from None
        column_list = ", ".join(f"`{n}`" for n in names)
        settings = ""
        if token is not None:
            # One reader: the insert's blocks (each deduplicated as token + its ordinal) come
            # out the same way every time the batch is sent (measured: no slower).
            settings = (
                f"SETTINGS insert_deduplication_token = '{token}', "
                "deduplicate_blocks_in_dependent_materialized_views = 1, max_threads = 1 "
            )
        try:
            self._writer.query(
                f"INSERT INTO {self.database}.`{table}` ({column_list}) "
                f"{settings}SELECT * FROM Python(batch)"
            )
        except Exception as e:
            error = _error(e)
            if error.code in SCHEMA_CHANGED:
                self._read_columns()  # the retry converts the rows for the table as it is now
                raise error from None
            if refused_for_data(error.code, str(error), self._answers):
                raise DataRejected(_reason(error), error.code) from None
            raise error from None
        self._inserts += 1

    def _answers(self) -> bool:
        """The probe after an insert failed for a reason no list names: chDB answers a query
        and a file can be created and written in the directory of every table of the
        database (an insert's first step is a part directory there; a read-only or full disk,
        or a table directory made immutable, fails it). On the writer thread."""
        try:
            result = self._writer.query(
                "SELECT arrayJoin(data_paths) FROM system.tables WHERE database = {db:String}",
                "TabSeparated",
                params={"db": self.database},
            )
            for path in result.bytes().decode().splitlines():
                # "tmp_" as ClickHouse's own temporary parts: a table skips such names on load.
                # (Written, not synced: a full disk refuses the write itself.)
                with tempfile.TemporaryFile(dir=path, prefix="tmp_sfpl_probe_") as f:
                    f.write(b"probe")
                    f.flush()
        except Exception as e:  # noqa: BLE001 - any failure of the probe means "not now"
            log.warn("store: chDB fails its probe ({why}): retrying", why=one_line(e))
            return False
        return True

    def _check_columns(self, table: str, columns: dict[str, str]) -> None:
        """Before blaming rows, make sure the table is still what they were converted for (an
        ALTER since its columns were read makes every row "bad"); else retry the batch."""
        self._read_columns()
        if self.columns.get(table) != columns:
            raise StoreError(f"the columns of {self.database}.{table} changed; retrying the batch")

    def without_stored(self, table: str, rows: list[dict]) -> defer.Deferred:
        """The rows whose dedup key is not stored yet (all of them for a table without one)."""
        return self._on_writer(self._without_stored, table, rows)

    def _without_stored(self, table: str, rows: list[dict]) -> list[dict]:
        key, wanted = keys_to_check(table, rows)
        if key is None or not wanted:
            return rows
        result = self._writer.query(
            f"SELECT toString(`{key}`) FROM {self.database}.`{table}` "
            f"WHERE `{key}` IN {{keys:Array(UUID)}}",
            "TabSeparated",
            params={"keys": "[" + ",".join(f"'{k}'" for k in wanted) + "]"},
        )
        stored = set(result.bytes().decode().split())
        return drop_stored(rows, key, stored)

    def sync(self) -> defer.Deferred:
        """Make every stored row durable against power loss.

        ClickHouse does not fsync the parts it writes (``fsync_after_insert`` is off), so a
        row "stored" may still be only in the page cache. The spool loader calls this before
        it records rows as stored and deletes their spool copy.
        """
        return deferToThread(syncfs, self.path)

    def execute(self, sql: str) -> defer.Deferred:
        """A statement on the writer connection (schema changes, maintenance, tests)."""

        def run():
            try:
                return self._writer.query(sql, "TabSeparated").bytes()
            except Exception as e:
                raise _error(e) from None

        return self._on_writer(run)

    def execute_together(self, statements: list[str]) -> defer.Deferred:
        """Statements back to back on the writer session, as one job of the writer thread:
        no insert runs between them (``SerialStore``; the dashboard's rollup rebuild)."""

        def run():
            answers = []
            for sql in statements:
                try:
                    answers.append(self._writer.query(sql, "TabSeparated").bytes())
                except Exception as e:
                    raise _error(e) from None
            return answers

        return self._on_writer(run)

    # -- reads ------------------------------------------------------------------------------

    def query(
        self,
        sql: str,
        fmt: str = "JSONEachRow",
        params: dict[str, Any] | None = None,
        database: str | None = None,
    ) -> defer.Deferred:
        """A read-only query on a reader thread; fires with the formatted bytes."""

        def run():
            conn = self._reader()
            try:
                conn.query(f"USE `{database or 'default'}`")
                return conn.query(sql, fmt, params=escaped(params)).bytes()
            except Exception as e:
                raise _error(e) from None

        return self._on_reader(run)

    def user_query(
        self, sql: str, fmt: str, database: str | None = None, limits=None
    ) -> defer.Deferred:
        """A query of the query listener: checked by ``query_guard`` and run, both on a
        reader thread; fires with ``(format, bytes)``. ``QueryRefused`` if not allowed.

        ``limits`` (ClickHouse settings: ``max_execution_time``, ``max_result_bytes``, ...)
        hold for client queries only, so they run on a session of their own: a readonly
        session takes no settings per query, and the gateway's own reads need no bound."""

        def run():
            conn = self._reader()
            checked = self.guard.check(conn, sql, database)
            out = checked.fmt or fmt
            user = self._reader(limits) if limits else conn
            try:
                user.query(f"USE `{checked.database}`")
                return out, user.query(checked.sql, out).bytes()
            except Exception as e:
                raise _error(e) from None

        return self._on_reader(run)

    def ping(self) -> defer.Deferred:
        return self.query("SELECT 1", "TabSeparated")

    def metric_families(self):
        """Prometheus families (read by ``/metrics`` through ``Gateway.metric_sources``)."""
        yield dead_letter_family(self.stats["dead_letters"])


CONFIG_FILE = "chdb-config.xml"


def chdb_config_xml() -> str:
    """The engine's configuration: SERVER_SETTINGS and MERGE_TREE_SETTINGS as ClickHouse XML."""

    def elements(settings: dict) -> str:
        return "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in settings.items())

    return (
        "<clickhouse>"
        + elements(SERVER_SETTINGS)
        + f"<merge_tree>{elements(MERGE_TREE_SETTINGS)}</merge_tree>"
        + "</clickhouse>\n"
    )


def write_chdb_config(path: Path) -> Path:
    """Write the engine's configuration to ``path`` (again at every start: the budget is the
    code's, not something edited in place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, chdb_config_xml())
    return path


def chdb_connection_string(
    path: Path, config: Path | None = None, settings: dict[str, int] | None = None
) -> str:
    """``file:<path>?...``: with ``config`` the engine's configuration file (read when the
    first connection of the process opens the engine), ``settings`` for this connection's
    session."""
    args: dict[str, object] = {"config-file": str(config)} if config else {}
    args.update(settings or {})
    return f"file:{path}" + ("?" + urlencode(args, safe="/:") if args else "")


# chDB reads a bound parameter's text in the escaped (TabSeparated) format: a TAB or newline
# in a value is refused and ``\\t`` becomes a TAB, so a looked-up uid, vid or host could fail
# or match another value. Escaping the text makes the parameter exactly the caller's string.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})


def escaped(params: dict[str, Any] | None) -> dict[str, Any] | None:
    """``params`` with every text value escaped for chDB's parameter parser."""
    if not params:
        return params
    return {k: v.translate(_ESCAPES) if isinstance(v, str) else v for k, v in params.items()}


def syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` (Linux ``syncfs``; ``sync`` elsewhere)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "syncfs"):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name, use_errno=True) if name else None


if TYPE_CHECKING:  # mypy checks the contracts this store keeps (store/interface.py)

    def _contracts(
        store: EmbeddedStore,
    ) -> tuple[Store, TokenStore, SyncingStore, SerialStore]:
        return store, store, store, store
