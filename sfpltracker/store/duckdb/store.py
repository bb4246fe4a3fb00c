"""The DuckDB store: the tracker's tables in one DuckDB file any DuckDB client opens.

``{"Type": "duckdb", "File": "data/sfpla.duckdb"}`` in ``Notify`` (docs/duckdb.md). The file
is attached under the database's name (``sfpla``), so the tracker's reads say ``sfpla.events``
as on ClickHouse; the tables are those of ``schema/*.sql`` (``store/duckdb/schema.py``).

Writes: one writer thread, one transaction per insert. An insert's rows and, with a token,
the token itself (``_sfpl_insert_tokens``) commit together: a batch the insert journal sends
again after a crash either committed whole, token included (the re-send is skipped), or not
at all (the re-send stores it). DuckDB syncs its write-ahead log at each commit, so a
confirmed insert is durable and the spool loader has nothing more to ask (no ``sync()``).
Replays are dropped by the tables' primary keys as well (``schema.py``: ``eid`` and the other
``DEDUP_KEYS``). The derived tables are views, so there is no second part to land.

Rows DuckDB refuses for their data (a value that is not a UUID, malformed JSON, a number out
of range) are found by ``rejects.bisect`` as in the other stores, each half with a token
derived from the batch's, and set aside in ``DataDirectory/deadletter/``; any other failure is
a ``StoreError`` and the batcher retries.

Reads run on reader threads, each with its own cursor of the database. Once the schema is
loaded the database is closed to the outside: ``enable_external_access = false`` (no file,
no network, no extension loading or installing, no ``ATTACH``, no ``COPY``, no Python object
scans) and ``lock_configuration = true`` (no ``SET`` undoes it). The query listener's queries
are then parsed by DuckDB and run only as one ``SELECT`` (or ``EXPLAIN``) statement, in a
read-only transaction (a ``SELECT`` may hold a data-modifying CTE), with
``QueryTimeoutSeconds`` (the query is interrupted) and ``QueryMaxResultBytes``.
"""

from __future__ import annotations

import datetime
import io
import json
import queue
import re
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from sfpltracker.store.deadletter import DeadLetters
from sfpltracker.store.dedup import drop_stored, keys_to_check
from sfpltracker.store.duckdb import dialect
from sfpltracker.store.duckdb.schema import (
    INSERT_TABLES,
    TOKENS_TABLE,
    Table,
    build,
    default_of,
    macros,
)
from sfpltracker.store.errors import StoreError
from sfpltracker.store.interface import Store, TokenStore
from sfpltracker.store.query_guard import QueryRefused
from sfpltracker.store.rejects import DataRejected, Dead, bisect, dead_letter_family, one_line
from sfpltracker.store.schema import DEFAULT_DATABASE

log = Logger()

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
TOKEN_WINDOW = 10_000  # tokens kept (the journals re-send only the batch a crash cut short)
MAX_REASON = 500
MEMORY_LIMIT = "256MB"  # the engine's budget inside the gateway process (docs/duckdb.md)
THREADS = 2
# ClickHouse's codes for what the query listener answers (web/query.py: 4xx with the reason).
SYNTAX_ERROR, UNKNOWN_FORMAT, TIMEOUT_EXCEEDED, TOO_MANY_BYTES = 62, 73, 159, 396
UNKNOWN_TABLE = 60
READ_STATEMENTS = ("SELECT", "EXPLAIN")


def _duck():
    try:
        import duckdb
    except ImportError:
        raise StoreError(
            "the duckdb store needs the duckdb package: pip install 'sfpltracker[duckdb]'"
        ) from None
    return duckdb


def _data_errors() -> tuple[type[BaseException], ...]:
    d = _duck()
    return (
        d.ConversionException,
        d.InvalidInputException,
        d.ConstraintException,
        d.OutOfRangeException,
        d.TypeMismatchException,
    )


def _reason(exc: BaseException) -> str:
    text = one_line(exc)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def _arrow_column(values: list, duck_type: str) -> pa.Array:
    """One column of rows as Arrow, in the type DuckDB casts from (raises on bad values)."""
    if duck_type == "TIMESTAMP":
        return pa.array(values, type=pa.timestamp("ms"))  # epoch milliseconds, UTC
    if duck_type == "DATE":
        epoch = datetime.date(1970, 1, 1)
        return pa.array(
            [epoch + datetime.timedelta(days=v) if isinstance(v, int) else v for v in values],
            type=pa.string() if any(isinstance(v, str) for v in values) else pa.date32(),
        )
    if duck_type in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT",
                     "UINTEGER"):  # fmt: skip
        return pa.array(values, type=pa.int64())
    if duck_type == "UBIGINT":
        return pa.array(values, type=pa.uint64())
    if duck_type in ("DOUBLE", "FLOAT"):
        return pa.array(values, type=pa.float64())
    if duck_type == "BOOLEAN":
        return pa.array([None if v is None else bool(v) for v in values], type=pa.bool_())
    if duck_type == "JSON":
        return pa.array(
            [v if v is None or isinstance(v, str) else json.dumps(v) for v in values],
            type=pa.string(),
        )
    if duck_type.endswith("[]"):
        return pa.array(values, type=pa.list_(pa.string()))
    return pa.array(values, type=pa.string())  # VARCHAR, UUID (cast by DuckDB)


class DuckDBStore:
    """A ``store.interface.Store`` and a ``TokenStore`` on one DuckDB file."""

    kind = "duckdb"
    insert_tokens: Literal[True] = True
    cluster = ""
    server_version = ""

    def __init__(
        self,
        path: Path,
        data_dir: Path,
        reactor,
        database: str = DEFAULT_DATABASE,
        readers: int = 2,
        memory_limit: str = MEMORY_LIMIT,
    ):
        self.path = Path(path)
        self.reactor = reactor
        self.database = database
        self.memory_limit = memory_limit
        self.writer_pool = ThreadPool(1, 1, name="duckdb-writer")
        self.reader_pool = ThreadPool(1, readers, name="duckdb-reader")
        self.deadletters = DeadLetters(Path(data_dir) / "deadletter")
        self.stats: dict[str, Counter] = {"dead_letters": Counter()}
        self.schema = build(database)
        self.tables: dict[str, Table] = self.schema.tables
        self.columns: dict[str, dict[str, str]] = {}  # table -> column -> DuckDB type
        self._con: Any = None
        self._local = threading.local()
        self._cursors: queue.Queue = queue.Queue()
        self._seq = 0

    @property
    def where(self) -> str:
        return str(self.path)

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        if self.writer_pool.joined:  # started again after stop(): new threads
            self.writer_pool = ThreadPool(1, 1, name="duckdb-writer")
            self.reader_pool = ThreadPool(1, self.reader_pool.max, name="duckdb-reader")
            self._local = threading.local()
        self.writer_pool.start()
        self.reader_pool.start()
        return self._on_writer(self._open_and_load)

    def stop(self) -> defer.Deferred:
        def close():
            if self._con is not None:
                try:
                    self._con.execute("CHECKPOINT")  # the WAL folded in: one file to copy
                    self._con.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
                self._con = None

        d = self._on_writer(close)

        def stop_pools(result):
            self.writer_pool.stop()
            self.reader_pool.stop()
            return result

        d.addBoth(stop_pools)
        return d

    def _open_and_load(self) -> None:
        duckdb = _duck()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(
            ":memory:", config={"threads": THREADS, "memory_limit": self.memory_limit}
        )
        try:
            con.execute(f"ATTACH '{_quote(str(self.path))}' AS \"{self.database}\"")
        except Exception as e:
            con.close()
            hint = ""
            if "lock" in str(e).lower():
                hint = " (another process - a running gateway? - has it open)"
            raise StoreError(f"cannot open the DuckDB store at {self.path}{hint}: {e}") from None
        con.execute(f'USE "{self.database}"')
        self._con = con
        self._load_schema()
        self._cursors = queue.Queue()
        for _ in range(self.reader_pool.max):
            self._cursors.put(con.cursor())
        # Closed to the outside from here on, for every connection of this database.
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")

    def load_schema(self) -> defer.Deferred:
        return self._on_writer(self._load_schema)

    def _load_schema(self) -> int:
        con = self._con
        statements = [("macros", m) for m in macros(self.database)] + self.schema.statements
        for what, sql in statements:
            try:
                con.execute(sql)
            except Exception as e:
                raise StoreError(f"schema {what}: {e}") from None
        self._read_columns()
        self._add_missing_columns()
        row = con.execute(f"SELECT coalesce(max(seq), 0) FROM {self.database}.{TOKENS_TABLE}")
        self._seq = int(row.fetchone()[0])
        return len(statements)

    def _add_missing_columns(self) -> None:
        """Columns the schema files added to a table since this file was made (``CREATE
        TABLE IF NOT EXISTS`` leaves an existing table as it is)."""
        added = False
        for name, table in self.tables.items():
            stored = self.columns.get(name)
            if stored is None:
                continue
            for column in table.columns:
                if column.name not in stored:
                    log.info("store: {table} gets column {column}", table=name, column=column.name)
                    self._con.execute(
                        f'ALTER TABLE {self.database}."{name}" ADD COLUMN "{column.name}" '
                        f"{column.type} DEFAULT {column.default}"
                    )
                    added = True
        if added:
            self._read_columns()

    def _read_columns(self) -> None:
        rows = self._con.execute(
            "SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c "
            "JOIN information_schema.tables t ON t.table_catalog = c.table_catalog "
            "AND t.table_schema = c.table_schema AND t.table_name = c.table_name "
            "WHERE c.table_catalog = ? AND t.table_type = 'BASE TABLE' "
            "ORDER BY c.table_name, c.ordinal_position",
            [self.database],
        ).fetchall()
        columns: dict[str, dict[str, str]] = {}
        for table, name, duck_type in rows:
            if table != TOKENS_TABLE:
                columns.setdefault(table, {})[name] = duck_type
        self.columns = columns

    # -- threads ----------------------------------------------------------------------------

    def _on_writer(self, fn, *args) -> defer.Deferred:
        return deferToThreadPool(self.reactor, self.writer_pool, fn, *args)

    def _cursor(self):
        """This reader thread's own connection to the database (made on the writer thread
        at open: a DuckDB connection is not to be used by two threads at once)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            try:
                cur = self._cursors.get_nowait()
            except queue.Empty:
                raise StoreError("the DuckDB store is not open", 210) from None
            cur.execute(f'USE "{self.database}"')
            self._local.cursor = cur
        return cur

    # -- writes -----------------------------------------------------------------------------

    def insert(
        self, table: str, rows: list[dict], dedup: bool = False, token: str | None = None
    ) -> defer.Deferred:
        """Insert rows in one transaction; ``dedup``: rows whose key is stored are left out
        first; ``token``: a re-send with the same token stores nothing twice."""
        if token is not None and not _TOKEN.match(token):
            return defer.fail(StoreError(f"bad insert token {token!r}"))
        d = self._on_writer(self._insert, table, rows, dedup, token)
        d.addCallback(self._settle, table)
        return d

    def _settle(self, outcome: tuple[int, Dead], table: str) -> int:
        stored, dead = outcome
        if dead:
            self.stats["dead_letters"][table] += len(dead)
            log.error(
                "store: DuckDB refused {n} row(s) of {table} for their data ({reason}); "
                "stored the other {stored}, kept the refused in {path}",
                n=len(dead),
                table=table,
                reason=dead[0][1],
                stored=stored,
                path=str(self.deadletters.path(table)),
            )
        return stored

    def _insert(self, table: str, rows: list[dict], dedup: bool, token: str | None):
        target = INSERT_TABLES.get(table, table)
        if self._con is None:
            raise StoreError("the DuckDB store is not open", 210)
        if target not in self.columns:
            raise StoreError(f"no table {self.database}.{table}", UNKNOWN_TABLE)
        if dedup and token is None:
            rows = self._without_stored(table, rows)
        dead: Dead = []
        if not rows:
            return 0, dead
        try:
            self._send(target, rows, token)
            return len(rows), dead
        except DataRejected as e:
            refused = e
        stored = 0

        def again(half: list[dict], label: str) -> None:
            nonlocal stored
            if token is not None:
                self._send(target, half, f"{token}-{label}"[:100])
            else:
                half = self._without_stored(table, half)
                if half:
                    self._send(target, half, None)
            stored += len(half)

        bisect(rows, refused, again, dead)
        self.deadletters.append(table, dead, "duckdb")
        return stored, dead

    def _send(self, table: str, rows: list[dict], token: str | None) -> None:
        """One transaction: the rows and their token. ``DataRejected`` for the rows' values."""
        con = self._con
        columns = self.columns[table]
        spec = self.tables.get(table)
        if spec is not None and spec.key:
            rows = _newest_per_key(rows, spec)
        present = [c for c in columns if any(c in r for r in rows)]
        try:
            batch = pa.Table.from_arrays(
                [_arrow_column([r.get(c) for r in rows], columns[c]) for c in present],
                names=present,
            )
        except (ValueError, TypeError, OverflowError) as e:
            raise DataRejected(_reason(e), 0) from None
        names = ", ".join(f'"{c}"' for c in present)
        values = ", ".join(
            f'coalesce(CAST(b."{c}" AS {columns[c]}), {default_of(columns[c])})' for c in present
        )
        sql = (
            f'INSERT INTO {self.database}."{table}" ({names}) SELECT {values} FROM _sfpl_batch b'
            + _on_conflict(spec, columns)
        )
        # Registered outside the transaction: dropping it in an aborted one would fail.
        con.register("_sfpl_batch", batch)
        try:
            self._commit(con, table, sql, rows, token)
        finally:
            con.unregister("_sfpl_batch")
        if token is not None and self._seq % 1000 == 0:
            con.execute(
                f"DELETE FROM {self.database}.{TOKENS_TABLE} WHERE seq <= ?",
                [self._seq - TOKEN_WINDOW],
            )

    def _commit(self, con, table: str, sql: str, rows: list[dict], token: str | None) -> None:
        duckdb = _duck()
        con.begin()
        try:
            if token is not None:
                found = con.execute(
                    f"SELECT 1 FROM {self.database}.{TOKENS_TABLE} WHERE token = ?", [token]
                ).fetchone()
                if found:
                    con.rollback()
                    return
            con.execute(sql)
            if token is not None:
                self._seq += 1
                con.execute(
                    f"INSERT INTO {self.database}.{TOKENS_TABLE} VALUES (?, ?, ?, ?)",
                    [token, table, len(rows), self._seq],
                )
            con.commit()
        except _data_errors() as e:
            _rollback(con)
            raise DataRejected(_reason(e), 0) from None
        except (duckdb.BinderException, duckdb.CatalogException) as e:
            _rollback(con)
            self._read_columns()  # the table changed since its columns were read: retry
            raise StoreError(one_line(e), UNKNOWN_TABLE) from None
        except duckdb.Error as e:
            _rollback(con)
            raise StoreError(one_line(e)) from None

    def without_stored(self, table: str, rows: list[dict]) -> defer.Deferred:
        return self._on_writer(self._without_stored, table, rows)

    def _without_stored(self, table: str, rows: list[dict]) -> list[dict]:
        key, wanted = keys_to_check(table, rows)
        if key is None or not wanted:
            return rows
        found = self._con.execute(
            f'SELECT CAST("{key}" AS VARCHAR) FROM {self.database}."{table}" '
            f'WHERE "{key}" IN (SELECT TRY_CAST(unnest(CAST(? AS VARCHAR[])) AS UUID))',
            [[str(k) for k in wanted]],
        ).fetchall()
        return drop_stored(rows, key, {str(r[0]).lower() for r in found})

    def execute(self, sql: str) -> defer.Deferred:
        """A statement on the writer connection (DuckDB SQL: maintenance, tests)."""

        def run():
            try:
                result = self._con.execute(sql)
                rows = result.fetchall() if result.description else []
            except Exception as e:
                raise StoreError(one_line(e), SYNTAX_ERROR) from None
            return "".join("\t".join(map(str, r)) + "\n" for r in rows).encode()

        return self._on_writer(run)

    # -- reads ------------------------------------------------------------------------------

    def query(
        self,
        sql: str,
        fmt: str = "JSONEachRow",
        params: dict[str, Any] | None = None,
        database: str | None = None,
    ) -> defer.Deferred:
        """One of the tracker's reads (ClickHouse-flavoured: ``dialect.translate``)."""

        def run():
            cur = self._cursor()
            duck_sql, values = dialect.translate(sql, params)
            try:
                cur.execute(duck_sql, values or None)
                return _formatted(cur, fmt, 0)
            except _duck().Error as e:
                raise StoreError(one_line(e), _code(e)) from None

        return deferToThreadPool(self.reactor, self.reader_pool, run)

    def user_query(
        self, sql: str, fmt: str, database: str | None = None, limits=None
    ) -> defer.Deferred:
        """A query of the query listener: one read statement as DuckDB parses it, run with
        the listener's time and size limits; fires with ``(format, bytes)``."""
        limits = limits or {}

        def run():
            if database not in (None, "", self.database):
                raise QueryRefused(f"database {database!r} is not the tracker's ({self.database})")
            text, asked = dialect.split_format(sql)
            out = asked or fmt
            if out not in dialect.FORMATS:
                raise StoreError(f"format {out} is not available on the DuckDB store",
                                 UNKNOWN_FORMAT)  # fmt: skip
            cur = self._cursor()
            try:
                statements = cur.extract_statements(dialect.without_final(text))
            except _duck().Error as e:
                raise StoreError(one_line(e), SYNTAX_ERROR) from None
            if len(statements) != 1:
                raise QueryRefused(f"one statement per query, got {len(statements)}")
            kind = statements[0].type.name
            if kind not in READ_STATEMENTS:
                raise QueryRefused(f"only SELECT runs here, not {kind}")
            timer = threading.Timer(float(limits.get("max_execution_time") or 0) or 1e9,
                                    cur.interrupt)  # fmt: skip
            timer.daemon = True
            timer.start()
            try:
                # A SELECT can still write (``WITH x AS (DELETE ... RETURNING *) SELECT``): a
                # read-only transaction refuses any write, whatever the statement says.
                cur.execute("BEGIN TRANSACTION READ ONLY")
                cur.execute(statements[0])
                return out, _formatted(cur, out, int(limits.get("max_result_bytes") or 0))
            except _duck().TransactionException as e:
                raise QueryRefused(one_line(e)) from None
            except _duck().InterruptException:
                raise StoreError("the query ran past QueryTimeoutSeconds (TIMEOUT_EXCEEDED)",
                                 TIMEOUT_EXCEEDED) from None  # fmt: skip
            except dialect.TooBig as e:
                raise StoreError(f"{e} (TOO_MANY_ROWS_OR_BYTES)", TOO_MANY_BYTES) from None
            except _duck().PermissionException as e:
                raise QueryRefused(one_line(e)) from None
            except _duck().Error as e:
                raise StoreError(one_line(e), _code(e)) from None
            finally:
                timer.cancel()
                _rollback(cur)

        return deferToThreadPool(self.reactor, self.reader_pool, run)

    def ping(self) -> defer.Deferred:
        return self.query("SELECT 1", "TabSeparated")

    def metric_families(self):
        yield dead_letter_family(self.stats["dead_letters"])


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _rollback(con) -> None:
    try:
        con.rollback()
    except Exception:  # noqa: BLE001 - no transaction left to roll back
        pass


def _code(exc: BaseException) -> int:
    duckdb = _duck()
    if isinstance(exc, duckdb.CatalogException):
        return UNKNOWN_TABLE
    if isinstance(exc, (duckdb.ParserException, duckdb.BinderException)):
        return SYNTAX_ERROR
    return 1  # a query error: answered 400 with DuckDB's message


def _on_conflict(spec: Table | None, columns: dict[str, str]) -> str:
    """What a row whose key is stored does: dropped (a dedup key), or the newer version."""
    if spec is None or not spec.key:
        return ""
    if spec.keep_first:
        return " ON CONFLICT DO NOTHING"
    rest = [c for c in columns if c not in spec.key]
    if not rest:
        return " ON CONFLICT DO NOTHING"
    sets = ", ".join(f'"{c}" = excluded."{c}"' for c in rest)
    where = f' WHERE excluded."{spec.version}" >= "{spec.version}"' if spec.version else ""
    return f" ON CONFLICT DO UPDATE SET {sets}{where}"


def _newest_per_key(rows: list[dict], spec: Table) -> list[dict]:
    """One row per key within a batch, as the table would keep it (first, or newest version)."""
    if not spec.key:
        return rows
    kept: dict[tuple, dict] = {}
    for r in rows:
        k = tuple(str(r.get(c, "")).lower() for c in spec.key)
        old = kept.get(k)
        if old is None:
            kept[k] = r
        elif not spec.keep_first:
            v = spec.version
            if v is None or (r.get(v) or 0) >= (old.get(v) or 0):
                kept[k] = r
    return list(kept.values()) if len(kept) != len(rows) else rows


def _formatted(cur, fmt: str, limit: int) -> bytes:
    if cur.description is None:
        return b""
    if fmt in dialect.ARROW_FORMATS:
        table = cur.fetch_arrow_table()
        if limit and table.nbytes > limit:
            raise dialect.TooBig(f"the answer is larger than max_result_bytes ({limit})")
        sink = io.BytesIO()
        if fmt == "Parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, sink)
        else:
            import pyarrow.ipc as ipc

            opener = ipc.new_file if fmt == "Arrow" else ipc.new_stream
            with opener(sink, table.schema) as writer:
                writer.write_table(table)
        return sink.getvalue()
    names = [d[0] for d in cur.description]
    json_columns = {i for i, d in enumerate(cur.description) if str(d[1]).upper() == "JSON"}
    out = dialect.Output(fmt, names, json_columns, limit)
    out.begin()
    while chunk := cur.fetchmany(1000):
        out.write(chunk)
    return out.end()


if TYPE_CHECKING:

    def _contracts(store: DuckDBStore) -> tuple[Store, TokenStore]:
        return store, store
