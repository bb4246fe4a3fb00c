"""The contracts between the parts, in code: a store, a store with insert tokens, an intake.

``mypy`` checks the real parts against them (``pyproject.toml`` ``[tool.mypy]``) and
``tests/test_interfaces.py`` checks both real stores at run time. What a store *can* do beyond
``Store`` is a small Protocol of its own (``TokenStore``, ``SyncingStore``, ``MetricSource``),
asked once by the part that receives the store (``token_store()``, ``isinstance``), never with
``hasattr`` at the call site; stand-ins that declare only what a test uses then simply have
no such capability.

A *record* is ``(table, row)``; a row is a dict of JSON-friendly values (ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from twisted.internet.defer import Deferred

    from sfpltracker.store.deadletter import DeadLetters

Row = dict[str, Any]
Record = tuple[str, Row]

DEFAULT_DATABASE = "sfpla"


@runtime_checkable
class MetricSource(Protocol):
    """A part with numbers for ``/metrics``: prometheus metric families, read at scrape time."""

    def metric_families(self) -> Iterable[Metric]: ...


@runtime_checkable
class Store(Protocol):
    """What every store does: ``store/embedded`` (chDB) and ``store/clickhouse`` (server).

    Blocking work happens on the store's own threads, never on the reactor. A store sets
    aside rows it refuses for their data (``deadletters``) and fails with ``StoreError`` only
    when the store itself is in trouble, so the batcher retries only what can go in later.
    """

    kind: str  # "embedded", "clickhouse": shown on /health
    database: str  # where the gateway's tables are
    cluster: str  # ON CLUSTER name; "" for one server or chDB
    server_version: str  # the server that answered load_schema(); "" for chDB
    deadletters: DeadLetters

    @property
    def insert_tokens(self) -> bool:
        """True: ``insert(token=)`` is idempotent as a whole, views included (``TokenStore``)."""
        ...

    @property
    def where(self) -> str:
        """The data directory or the hosts, for the start-up log line."""
        ...

    def start(self) -> Deferred[Any]: ...

    def stop(self) -> Deferred[Any]: ...

    def load_schema(self) -> Deferred[int]: ...

    def insert(
        self, table: str, rows: list[Row], dedup: bool = False, token: str | None = None
    ) -> Deferred[int]:
        """Fires with how many rows were stored. ``dedup``: rows whose key is stored already
        are skipped (replays). ``token``: see ``insert_tokens``; a store without them takes
        the argument and relies on ``dedup`` alone."""
        ...

    def without_stored(self, table: str, rows: list[Row]) -> Deferred[list[Row]]:
        """The rows whose dedup key (``store.dedup.DEDUP_KEYS``) is not stored yet."""
        ...

    def query(
        self,
        sql: str,
        fmt: str = "JSONEachRow",
        params: dict[str, Any] | None = None,
        database: str | None = None,
    ) -> Deferred[bytes]:
        """A read-only query; fires with the formatted bytes."""
        ...

    def user_query(
        self,
        sql: str,
        fmt: str,
        database: str | None = None,
        limits: Mapping[str, int | float | str] | None = None,
    ) -> Deferred[tuple[str, bytes]]:
        """The query listener's: checked by ``store/query_guard.py``, ``QueryRefused`` if not
        allowed; run with ``limits`` (ClickHouse settings: time, result size); fires with
        ``(format, bytes)``."""
        ...

    def execute(self, sql: str) -> Deferred[bytes]: ...

    def ping(self) -> Deferred[Any]: ...

    def metric_families(self) -> Iterable[Metric]: ...


@runtime_checkable
class TokenStore(Protocol):
    """A store whose inserts are idempotent under ``insert_deduplication_token`` (chDB).

    The batcher then sends every attempt of a batch with one token, and the insert journals
    (spool loader, JetStream loader) re-send a batch cut short by a crash with its token, so
    the store writes exactly the parts (source table, views) that did not land.
    """

    @property
    def insert_tokens(self) -> Literal[True]: ...

    def insert(
        self, table: str, rows: list[Row], dedup: bool = False, token: str | None = None
    ) -> Deferred[int]: ...

    def without_stored(self, table: str, rows: list[Row]) -> Deferred[list[Row]]: ...


@runtime_checkable
class SyncingStore(Protocol):
    """A store that can make confirmed rows durable (chDB: ``syncfs``); the spool loader calls
    ``sync()`` before it forgets the spool's copy of them."""

    def sync(self) -> Deferred[Any]: ...


def token_store(store: object) -> TokenStore | None:
    """``store`` as a ``TokenStore`` when it says ``insert_tokens = True``, else None.

    Asked once by the part that receives the store (batcher, loaders)."""
    if isinstance(store, TokenStore) and store.insert_tokens is True:
        return store
    return None


def database_of(store: object) -> str:
    """The store's database; the default for a stand-in that names none (tests, benches)."""
    return getattr(store, "database", "") or DEFAULT_DATABASE


@runtime_checkable
class Intake(Protocol):
    """The point of acknowledgement: the web layer answers 2xx only once ``accept`` fired.

    ``accept`` fails with ``pipeline.intake.Refused`` (answered 503 + ``Retry-After``) when it
    cannot take the records now. Intakes: ``MemoryIntake``, ``SpoolIntake``, ``JetStreamIntake``,
    and ``PublishingIntake`` around one of them.
    """

    def start(self) -> Deferred[Any]: ...

    def accept(self, records: list[Record]) -> Deferred[Any]: ...

    def health(self) -> dict[str, Any]: ...

    def close(self) -> Deferred[Any]: ...
