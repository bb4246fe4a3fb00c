"""Scheduled export: new rows of chosen tables as Parquet, Hive layout, to S3 or a directory.

``Export: {"Every": "1h", "Target": "s3://bucket/prefix" | "/dir", "Tables": ["events"]}``
(docs/export.md). Each run writes the rows stored since the last run as
``<table>/day=YYYY-MM-DD/part-<first>-<last>.parquet``; DuckDB, Spark, Athena read the tree
with Hive partitioning.

Which rows are new: ClickHouse numbers every insert into a MergeTree table (its *block
number*). With the table setting ``enable_block_number_column`` (set here, once) each row keeps
its number as ``_block_number`` through merges and mutations. The embedded store inserts on one
writer thread, so numbers become visible in order: once number N is visible every row <= N is
there. (A row's ``created_at`` would not do: a row accepted during a store outage is stored
later with an older time.) The high-water mark per table and target is the last exported block
number, kept in ``DataDirectory/export/<target digest>.json`` (``fsutil.write_atomic``).

No row twice, none skipped, whatever is killed when:

1. the next range ``(done, hi]`` is fixed and written to the state file as ``pending`` before
   any object is written;
2. every object of the range is written under a name made of the range (``part-<done+1>-<hi>``),
   so a run that repeats the range after a crash replaces the same objects (an S3 PUT and a
   local ``write_atomic`` are whole or absent) instead of adding others;
3. ``done = hi`` is written only after every object of the range is written.

A run that finds ``pending`` (a kill, a failed upload) repeats exactly that range first. A
failing target (S3 down) fails the run; the state is unchanged and the next run retries.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from sfpltracker.fsutil import write_atomic
from sfpltracker.privacy.catalogue import Table, read_catalogue
from sfpltracker.store.interface import database_of

log = Logger()

STATE_DIR = "export"
# Engines whose merges combine rows of different inserts into one (sums, aggregates): a merged
# row's block number cannot say which of its parts were exported, so they are not exportable.
COMBINING = re.compile(r"(Summing|Aggregating|Collapsing|VersionedCollapsing)MergeTree")
RETRY_SECONDS = 60.0  # after a failed run, the next try (or Every, if sooner)


class ExportError(Exception):
    """A configuration the export cannot run with, worded for the operator."""


class ExportStopped(Exception):
    """The gateway is stopping: the run ends before its next object (its range stays
    pending)."""


def _after(d: defer.Deferred) -> defer.Deferred:
    """A Deferred firing (with None) once ``d`` has, leaving ``d``'s result to its callers."""
    waiter: defer.Deferred = defer.Deferred()

    def release(result):
        waiter.callback(None)
        return result

    d.addBoth(release)
    return waiter


# -- targets -------------------------------------------------------------------------------


class DirectoryTarget:
    """A local directory; each file written with ``write_atomic`` (0600: exports hold
    personal data)."""

    def __init__(self, root: Path):
        self.root = root
        self.name = str(root)

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, 0o600)


class S3Target:
    """An S3 bucket and prefix through pyarrow's S3 file system (the AWS SDK): an object is
    visible whole once its upload completed, or not at all."""

    def __init__(self, url: str, settings):
        from pyarrow import fs

        parts = urlsplit(url)
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.name = url
        env = os.environ.get
        endpoint = settings.Endpoint or env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL") or ""
        options: dict[str, Any] = {
            "region": settings.Region
            or env("AWS_REGION")
            or env("AWS_DEFAULT_REGION")
            or "us-east-1",
            "connect_timeout": 10,
            "request_timeout": 60,
            # the upload starts at the first write, and a file smaller than one part goes
            # up in one PutObject instead of a multipart upload's three requests
            "allow_delayed_open": True,
        }
        access = settings.AccessKeyId or env("AWS_ACCESS_KEY_ID")
        secret = settings.SecretAccessKey or env("AWS_SECRET_ACCESS_KEY")
        if access and secret:
            options["access_key"] = access
            options["secret_key"] = secret
            token = settings.SessionToken or env("AWS_SESSION_TOKEN")
            if token:
                options["session_token"] = token
        if endpoint:
            ep = urlsplit(endpoint)
            options["endpoint_override"] = ep.netloc
            options["scheme"] = ep.scheme
        self.fs = fs.S3FileSystem(**options)

    def put(self, key: str, data: bytes) -> None:
        path = f"{self.bucket}/{self.prefix}/{key}" if self.prefix else f"{self.bucket}/{key}"
        with self.fs.open_output_stream(path) as out:
            out.write(data)


def make_target(spec: str, settings, base: Path):
    if spec.startswith("s3://"):
        return S3Target(spec, settings)
    path = Path(spec)
    return DirectoryTarget(path if path.is_absolute() else base / path)


def check_target(spec: str) -> str | None:
    """Why ``spec`` is not a target (None: it is one)."""
    if "://" in spec:
        parts = urlsplit(spec)
        if parts.scheme != "s3":
            return f'expected "s3://bucket/prefix" or a directory, got {spec!r}'
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", parts.netloc):
            return f"{spec!r}: not an S3 bucket name"
    return None


# -- the watermark -------------------------------------------------------------------------


class ExportState:
    """``{"target": ..., "tables": {name: {"done": N, "pending": [lo, hi, rows] | null}}}``:
    ``rows`` is the MaxRowsPerFile the range was cut with, so a repeat cuts it the same."""

    def __init__(self, data_dir: Path, target: str):
        digest = hashlib.sha256(target.encode()).hexdigest()[:16]
        self.path = Path(data_dir) / STATE_DIR / f"{digest}.json"
        self.target = target
        self.tables: dict[str, dict] = {}
        try:
            saved = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        self.tables = saved.get("tables", {})

    def done(self, table: str) -> int:
        return int(self.tables.get(table, {}).get("done", 0))

    def pending(self, table: str) -> tuple[int, int, int] | None:
        got = self.tables.get(table, {}).get("pending")
        return (int(got[0]), int(got[1]), int(got[2])) if got else None

    def set(self, table: str, done: int, pending: tuple[int, int, int] | None) -> None:
        """Durably (blocking: call it on a thread)."""
        self.tables[table] = {"done": done, "pending": list(pending) if pending else None}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"target": self.target, "tables": self.tables}, indent=1)
        write_atomic(self.path, text + "\n", 0o600)


# -- the exporter --------------------------------------------------------------------------


def object_key(table: str, day: str, lo: int, hi: int, chunk: int) -> str:
    """The one name of a (table, day, range, chunk) object: a repeated range writes the same
    keys."""
    return f"{table}/day={day}/part-{lo + 1:012d}-{hi:012d}-{chunk:04d}.parquet"


def plan_ranges(blocks: list[tuple[int, int]], done: int, max_rows: int) -> list[tuple[int, int]]:
    """``(lo, hi]`` ranges covering ``blocks`` ((block number, rows), ascending) after
    ``done``, each of at most ``max_rows`` rows (a larger block is a range of its own)."""
    ranges = []
    lo, rows, last = done, 0, done
    for block, n in blocks:
        if rows and rows + n > max_rows:
            ranges.append((lo, last))
            lo, rows = last, 0
        rows += n
        last = block
    if rows:
        ranges.append((lo, last))
    return ranges


# One exporter per target in a process (the gateway's scheduled one, those `export --to` asked
# for): two would each write the target's state file from their own copy.
_EXPORTERS: dict[Path, Exporter] = {}


class Exporter:
    """One target's export: ``run()`` exports what is new; ``start()`` runs it every
    ``Every`` seconds (a component of the gateway)."""

    def __init__(self, settings, store, data_dir: Path, reactor, base_dir: Path):
        self.settings = settings
        self.store = store
        self.reactor = reactor
        self.data_dir = Path(data_dir)
        self.target = make_target(settings.Target, settings, base_dir)
        self.state = ExportState(self.data_dir, self.target.name)
        _EXPORTERS[self.state.path] = self
        self.loop: task.LoopingCall | None = None
        self.retry: Any = None
        self.running: defer.Deferred | None = None
        self.prepared = False
        self.stopping = False
        self.stats: Counter = Counter()

    # -- life cycle (gateway component) ----------------------------------------------------

    @defer.inlineCallbacks
    def start(self):
        yield self.prepare()
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = self.reactor
        self.loop.start(self.settings.Every, now=True)

    def stop(self) -> defer.Deferred:
        self.stopping = True
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if self.retry is not None and self.retry.active():
            self.retry.cancel()
        # A run in progress stops before its next object (its range stays pending, to be
        # repeated by the next start): the store must not close under its queries.
        return _after(self.running) if self.running is not None else defer.succeed(None)

    def tick(self) -> None:
        if self.running is not None:  # a scheduled run never queues behind another
            return
        d = self.run()
        d.addErrback(self._failed)

    def _failed(self, failure) -> None:
        if failure.check(ExportStopped):
            return
        self.stats["failures"] += 1
        log.error(
            "export to {target} failed, retrying later (the watermark is kept): {why}",
            target=self.target.name,
            why=failure.getErrorMessage(),
        )
        if self.loop is not None and self.loop.running:
            delay = min(RETRY_SECONDS, self.settings.Every)
            if self.retry is None or not self.retry.active():
                self.retry = self.reactor.callLater(delay, self.tick)

    # -- one run ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def prepare(self):
        """Check the tables and give each its persisted block number (once)."""
        if self.prepared:
            return
        catalogue = yield read_catalogue(self.store)
        targets = yield self._view_targets()
        self.tables: list[Table] = []
        for name in self.settings.Tables:
            table = catalogue.get(name)
            if table is None:
                raise ExportError(f"Export.Tables: no table {name!r} in the store")
            if table.time_column is None:
                raise ExportError(f"Export.Tables: {name!r} has no date column to partition by")
            if COMBINING.search(table.engine) or name in targets:
                raise ExportError(
                    f"Export.Tables: {name!r} is a table whose rows merges combine (a view's "
                    "target); export the table it is derived from"
                )
            self.tables.append(table)
        yield self._number_blocks()
        self.prepared = True

    @defer.inlineCallbacks
    def _view_targets(self):
        db = database_of(self.store)
        raw = yield self.store.query(
            "SELECT create_table_query FROM system.tables "
            "WHERE database = {db:String} AND engine = 'MaterializedView'",
            "TabSeparated",
            params={"db": db},
        )
        found = set()
        for m in re.finditer(r"\bTO\s+`?(\w+)`?\.`?(\w+)`?", raw.decode(), re.IGNORECASE):
            if m.group(1) == db:
                found.add(m.group(2))
        return found

    @defer.inlineCallbacks
    def _number_blocks(self):
        db = database_of(self.store)
        for table in self.tables:
            raw = yield self.store.query(
                "SELECT engine_full FROM system.tables "
                "WHERE database = {db:String} AND name = {t:String}",
                "TabSeparated",
                params={"db": db, "t": table.name},
            )
            if "enable_block_number_column = 1" not in raw.decode():
                log.info(
                    "export: {table} keeps each row's block number from now on", table=table.name
                )
                yield self.store.execute(
                    f"ALTER TABLE {db}.`{table.name}` MODIFY SETTING enable_block_number_column = 1"
                )

    def run(self) -> defer.Deferred:
        """Export what is new; fires with ``{table: rows}``. A run already going is joined."""
        if self.running is not None:  # after the run in progress, a run of its own
            return _after(self.running).addCallback(lambda _: self.run())
        self.running = self._run()

        def done(result):
            self.running = None
            return result

        return self.running.addBoth(done)

    @defer.inlineCallbacks
    def _run(self):
        yield self.prepare()
        began = time.monotonic()
        counts = {}
        for table in self.tables:
            counts[table.name] = yield self._export_table(table)
        total = sum(counts.values())
        seconds = time.monotonic() - began
        self.stats["runs"] += 1
        self.stats["rows"] += total
        if total:
            log.info(
                "export: {rows} rows to {target} in {s:.2f} s ({tables})",
                rows=total,
                target=self.target.name,
                s=seconds,
                tables=", ".join(f"{k} {v}" for k, v in counts.items()),
            )
        return {"tables": counts, "rows": total, "seconds": round(seconds, 3)}

    @defer.inlineCallbacks
    def _export_table(self, table: Table):
        name = table.name
        rows = 0
        pending = self.state.pending(name)
        if pending is not None:  # a run cut short: the same range, the same objects, first
            rows += yield self._export_range(table, *pending)
            yield threads.deferToThread(self.state.set, name, pending[1], None)
        done = self.state.done(name)
        db = database_of(self.store)
        raw = yield self.store.query(
            f"SELECT _block_number AS b, count() AS n FROM {db}.`{name}` "
            f"WHERE _block_number > {done} GROUP BY b ORDER BY b",
            "TabSeparated",
        )
        blocks = []
        for line in raw.decode().splitlines():
            if line:
                block, n = line.split("\t")
                blocks.append((int(block), int(n)))
        size = self.settings.MaxRowsPerFile
        for lo, hi in plan_ranges(blocks, done, size):
            yield threads.deferToThread(self.state.set, name, lo, (lo, hi, size))
            rows += yield self._export_range(table, lo, hi, size)
            yield threads.deferToThread(self.state.set, name, hi, None)
        return rows

    @defer.inlineCallbacks
    def _export_range(self, table: Table, lo: int, hi: int, size: int):
        db = database_of(self.store)
        column = table.time_column
        where = f"_block_number > {lo} AND _block_number <= {hi}"
        raw = yield self.store.query(
            f"SELECT toString(toDate(`{column}`)) AS day, count() AS n "
            f"FROM {db}.`{table.name}` WHERE {where} GROUP BY day ORDER BY day",
            "TabSeparated",
        )
        rows = 0
        for line in raw.decode().splitlines():
            if not line:
                continue
            day, n = line.split("\t")
            # A (range, day) of more than MaxRowsPerFile rows (rows stored before the block
            # numbers were kept share their part's number) is cut into chunks by a hash of the
            # whole row: the same rows make the same chunks when a range is repeated, and no
            # chunk needs a sort (a reader query's memory is capped).
            chunks = -(-int(n) // size)
            for chunk in range(chunks):
                if self.stopping:
                    raise ExportStopped()
                part = f" AND cityHash64(*) % {chunks} = {chunk}" if chunks > 1 else ""
                data = yield self.store.query(
                    f"SELECT * FROM {db}.`{table.name}` WHERE {where} "
                    f"AND toDate(`{column}`) = toDate('{day}'){part}",
                    "Parquet",
                )
                key = object_key(table.name, day, lo, hi, chunk)
                yield threads.deferToThread(self.target.put, key, data)
                self.stats["objects"] += 1
            rows += int(n)
        return rows

    def metric_families(self):
        from prometheus_client.core import CounterMetricFamily

        for key, help_text in (
            ("rows", "rows exported"),
            ("objects", "objects (files) written by the export"),
            ("runs", "export runs completed"),
            ("failures", "export runs that failed (retried later)"),
        ):
            yield CounterMetricFamily(f"sfpl_export_{key}", help_text, value=self.stats[key])


# -- the admin command (``python -m sfpltracker export --to``) -------------------------------


def export_run(ctx, args: dict):
    """Export what is new to ``args["to"]`` (else ``Export.Target``) now; in the gateway, the
    scheduled exporter of that target runs (after the run it may be in)."""
    from dataclasses import replace

    from twisted.internet import reactor

    from sfpltracker.admin import AdminError

    if ctx.store.kind != "embedded":
        raise AdminError("export --to: needs the embedded store (docs/export.md)")
    to = args.get("to") or ctx.cfg.Export.Target
    if not to:
        raise AdminError("export: no target (give --to, or set Export.Target)")
    why = check_target(to)
    if why:
        raise AdminError(f"--to: {why}")
    tables = args.get("tables") or ctx.cfg.Export.Tables
    settings = replace(ctx.cfg.Export, Target=to, Tables=list(tables))
    name = make_target(to, settings, ctx.cfg.path(".")).name
    exporter = _EXPORTERS.get(ExportState(ctx.cfg.data_dir, name).path)
    if exporter is None or exporter.store is not ctx.store:
        exporter = Exporter(settings, ctx.store, ctx.cfg.data_dir, reactor, ctx.cfg.path("."))
    elif args.get("tables") and list(args["tables"]) != list(exporter.settings.Tables):
        raise AdminError(
            f"export: the gateway exports {', '.join(exporter.settings.Tables)} to {name}; "
            "--tables must name the same tables"
        )
    d = exporter.run()
    d.addErrback(lambda f: f.trap(ExportError) and _refuse(f))
    d.addCallback(lambda result: {**result, "target": name})
    return d


def _refuse(failure):
    from sfpltracker.admin import AdminError

    raise AdminError(failure.getErrorMessage())
