"""NATS: real-time fan-out of accepted events, and JetStream as a shared spool between gateways.

A ``Notify`` entry ``{"Type": "nats", "Hosts": [...], "Subject": "toc.track.notify"}``:

* plain mode: every accepted event row is published as JSON on ``Subject`` after the intake
  accepted it (``PublishingIntake``). Publishing never delays or fails the client's answer:
  rows wait in a bounded queue, nats-py buffers them while it reconnects, and whatever cannot be
  sent is counted (``sfpl_nats_publish_failed_total``), not retried.
* ``"JetStream": true``: the stream ``Stream`` is the gateway's spool (``JetStreamIntake``): a
  record is acknowledged to the client once JetStream stored it, published with its ``eid`` as
  ``Nats-Msg-Id`` so a client's retry within the stream's duplicate window is dropped by the
  server. With ``"Loader": true`` (the default) the gateway also runs the loader
  (``JetStreamLoader``): a durable pull consumer with explicit acks that feeds the batcher and
  acks a message only once its row is in the store; a redelivered message (a loader died between
  insert and ack) is inserted with the store's dedup, so every eid is stored once, and a batch
  the loader was inserting when it died is finished from its insert journal first, so the
  derived tables (views) count it once too. Several
  gateways can publish into one stream; every loader on the same durable consumer shares the work.

Events go on ``Subject`` (so real-time subscribers see the same JSON in both modes); other
tables' rows (payments, ...) go on ``Subject.<table>``, with the table in the ``Sfpl-Table``
header. nats-py is asyncio code: the gateway runs on Twisted's asyncio reactor
(``notify.reactor``) and coroutines are bridged with ``Deferred.fromFuture`` / ``asFuture``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from collections import deque
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from sfpltracker.pipeline.intake import Refused
from sfpltracker.pipeline.journal import InsertJournal, Journaled, finish

log = Logger()

TABLE_HEADER = "Sfpl-Table"
MSG_ID_HEADER = "Nats-Msg-Id"
PUBLISH_QUEUE = 100_000  # rows waiting for the plain publisher before new ones are dropped
FETCH_BATCH = 1000  # messages per loader fetch
MAX_OUTSTANDING = 20_000  # loader messages fetched but not yet stored and acked
DUPLICATE_WINDOW = 120.0  # seconds JetStream remembers a Nats-Msg-Id


def deferred(coro) -> defer.Deferred:
    """Run a coroutine on the reactor's asyncio loop; its result as a Deferred."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(coro))


def to_json(row: dict) -> bytes:
    return json.dumps(row, separators=(",", ":"), default=str).encode()


def message_id(table: str, row: dict, payload: bytes) -> str:
    """The JetStream dedup id: the event's eid, else the row's id, else a hash of the row."""
    if table == "events" and row.get("eid"):
        return str(row["eid"])
    key = row.get("id") or hashlib.sha256(payload).hexdigest()[:32]
    return f"{table}:{key}"


def subject_for(subject: str, table: str) -> str:
    return subject if table == "events" else f"{subject}.{table}"


@dataclass
class NatsStats:
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    publish_failed: int = 0
    js_published: int = 0
    js_refused: int = 0
    loaded: int = 0
    redelivered: int = 0
    load_failed: int = 0
    poison: int = 0
    resent: int = 0  # interrupted inserts sent again from the journal


class NatsClient:
    """One nats-py connection that connects in the background and reconnects forever.

    Start-up never waits for NATS unless the entry is ``Critical``; until it is connected the
    plain publisher counts failures and the JetStream intake refuses (503).
    """

    def __init__(self, entry, index: int, stats: NatsStats):
        self.entry = entry
        self.index = index
        self.stats = stats
        self.servers = [h if "://" in h else f"nats://{h}" for h in entry.Hosts]
        # What logs and errors say: no credentials (``nats://user:password@host`` is allowed).
        self.shown = ", ".join(_without_userinfo(s) for s in self.servers)
        self.nc = None
        self.js = None
        self.ready: asyncio.Event | None = None
        self._task: asyncio.Future | None = None
        self._reported_failure = False

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def start(self) -> defer.Deferred:
        self.ready = asyncio.Event()
        self._task = asyncio.ensure_future(self._connect())
        if self.entry.Critical:
            return deferred(self._wait_ready(self.entry.Timeout))
        return defer.succeed(None)

    async def _wait_ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            raise ConnectionError(
                f"Notify[{self.index}] is Critical and NATS at {self.shown} "
                f"did not answer within {timeout:.0f}s"
            ) from None

    async def _connect(self) -> None:
        import nats

        options = dict(
            servers=self.servers,
            name="sfpltracker",
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # also retries the first connect, in the background
            reconnect_time_wait=1,
            connect_timeout=max(1, int(self.entry.Timeout)),
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_connected,
        )
        tls = self._tls()
        if tls is not None:
            options["tls"] = tls
        if self.entry.Password:
            options.update(user=self.entry.Username, password=self.entry.Password)
        self.nc = await nats.connect(**options)
        self.js = self.nc.jetstream(timeout=self.entry.Timeout)
        await self._on_connected()

    def _tls(self) -> ssl.SSLContext | None:
        e = self.entry
        if not (e.Secure or e.CACert or e.Cert):
            return None
        context = ssl.create_default_context(cafile=e.CACert or None)
        if e.Cert:
            context.load_cert_chain(e.Cert, e.Key or None)
        return context

    async def _on_connected(self) -> None:
        self.stats.connects += 1
        self._reported_failure = False
        self.ready.set()
        log.info("NATS connected: {servers}", servers=self.shown)

    async def _on_disconnected(self) -> None:
        if self.ready.is_set():
            self.stats.disconnects += 1
            log.warn("NATS disconnected from {servers}; reconnecting", servers=self.shown)

    async def _on_error(self, e: Exception) -> None:
        if not self._reported_failure:  # one line per outage, not one per attempt
            self._reported_failure = True
            log.warn("NATS: {error}", error=f"{type(e).__name__}: {e}" if str(e) else repr(e))

    def stop(self) -> defer.Deferred:
        return deferred(self._close())

    async def _close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            if self.connected:
                try:
                    await self.nc.flush(timeout=2)  # what the publisher handed over leaves now
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
            await self.nc.close()


# --------------------------------------------------------------------------- plain publish


class EventPublisher:
    """Publishes rows on one subject from a bounded queue, one drain task at a time."""

    def __init__(self, client: NatsClient, subject: str, stats: NatsStats):
        self.client = client
        self.subject = subject
        self.stats = stats
        self.queue: deque[dict] = deque()
        self._draining = False

    def publish(self, rows: list[dict]) -> None:
        if not self.client.connected and not (self.client.nc and self.client.nc.is_reconnecting):
            self.stats.publish_failed += len(rows)  # never connected, or closed
            return
        room = PUBLISH_QUEUE - len(self.queue)
        if room < len(rows):
            self.stats.publish_failed += len(rows) - max(room, 0)
            rows = rows[: max(room, 0)]
        self.queue.extend(rows)
        if not self._draining and self.queue:
            self._draining = True
            asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        nc = self.client.nc
        try:
            while self.queue:
                row = self.queue.popleft()
                try:
                    await nc.publish(self.subject, to_json(row))
                    self.stats.published += 1
                except Exception:  # noqa: BLE001 - buffer full, closed, ...: counted
                    self.stats.publish_failed += 1
        finally:
            self._draining = False


class PublishingIntake:
    """Wraps the gateway's intake: what it accepted is then published; nothing else changes."""

    def __init__(self, inner, publishers: list[EventPublisher]):
        self.inner = inner
        self.publishers = publishers

    def accept(self, records) -> defer.Deferred:
        d = self.inner.accept(records)
        d.addCallback(self._accepted, records)
        return d

    def _accepted(self, result, records):
        rows = [row for table, row in records if table == "events"]
        if rows:
            for publisher in self.publishers:
                try:
                    publisher.publish(rows)
                except Exception:  # noqa: BLE001 - the client's answer never depends on NATS
                    log.failure("NATS publish failed")
                    publisher.stats.publish_failed += len(rows)
        return result

    def __getattr__(self, name):
        return getattr(self.inner, name)


# --------------------------------------------------------------------------- JetStream


async def ensure_stream(js, stream: str, subject: str) -> None:
    """Create the stream if missing (idempotent; every gateway and loader calls it)."""
    from nats.js.api import StorageType, StreamConfig
    from nats.js.errors import BadRequestError, NotFoundError

    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        config = StreamConfig(
            name=stream,
            subjects=[subject, f"{subject}.>"],
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
        )
        try:
            await js.add_stream(config)
        except BadRequestError as e:  # created meanwhile by another gateway
            if e.err_code != 10058:
                raise
        return
    if subject not in (info.config.subjects or []):
        log.warn(
            "JetStream stream {stream} exists without subject {subject}; events published "
            "there will not be stored",
            stream=stream,
            subject=subject,
        )


class JetStreamIntake:
    """The intake when JetStream is the spool: accepted = stored by JetStream (PubAck).

    It replaces the local spool rather than sitting behind it: the stream is already a durable
    (file storage; replicated in a NATS cluster) spool shared by every gateway, so a local
    copy would cost a second fsync per request and keep acknowledged events on one machine's
    disk, outside the stream the loaders drain. The price: while NATS cannot store, ingestion
    answers 503 + ``Retry-After`` instead of absorbing (docs/durability.md).
    """

    def __init__(self, client: NatsClient, entry, stats: NatsStats, batcher=None):
        self.client = client
        self.entry = entry
        self.stats = stats
        self.batcher = batcher  # this gateway's loader's, when it runs one
        self.in_flight: set[defer.Deferred] = set()
        self._stream_ready = False

    def accept(self, records) -> defer.Deferred:
        if not self.client.connected:
            self.stats.js_refused += len(records)
            return defer.fail(Refused("the event stream (NATS) is unavailable", retry_after=5))
        d = deferred(self._publish(records))
        self.in_flight.add(d)

        def done(result):
            self.in_flight.discard(d)
            return result

        def refused(failure):
            self.stats.js_refused += len(records)
            log.warn("JetStream publish failed: {why}", why=failure.getErrorMessage())
            raise Refused("the event stream (NATS) did not store the events", retry_after=2)

        return d.addBoth(done).addErrback(refused)

    async def _publish(self, records) -> None:
        js, entry = self.client.js, self.entry
        if not self._stream_ready:
            await ensure_stream(js, entry.Stream, entry.Subject)
            self._stream_ready = True
        sends = []
        for table, row in records:
            payload = to_json(row)
            headers = {MSG_ID_HEADER: message_id(table, row, payload), TABLE_HEADER: table}
            sends.append(
                js.publish(
                    subject_for(entry.Subject, table),
                    payload,
                    timeout=entry.Timeout,
                    stream=entry.Stream,
                    headers=headers,
                )
            )
        await asyncio.gather(*sends)
        self.stats.js_published += len(records)

    def status(self) -> str:
        """``down``: nothing can be accepted; ``degraded``: accepted, but this gateway's loader
        cannot store (events wait in the stream); ``ok``."""
        if not self.client.connected:
            return "down"
        breaker = self.batcher.breaker if self.batcher is not None else None
        if breaker is not None and (breaker.state != "closed" or breaker.failures > 0):
            return "degraded"
        return "ok"

    def health(self) -> dict:
        return {"status": self.status(), "spool": self.report()}

    def report(self) -> dict:
        st = self.stats
        return {
            "durability": "jetstream",  # the stream is the spool: no local spool files
            "stream": self.entry.Stream,
            "subject": self.entry.Subject,
            "connected": self.client.connected,
            "publishing": len(self.in_flight),  # requests waiting for their PubAck
            "published_records": st.js_published,
            "refused_records": st.js_refused,
            "loader": self.batcher is not None,
            "loaded_records": st.loaded,
            "redelivered_records": st.redelivered,
            "resent_inserts": st.resent,
        }

    def close(self) -> defer.Deferred:
        """Wait for the publishes in flight (their clients are waiting for the answer)."""
        waits = [defer.Deferred() for _ in self.in_flight]
        for d, w in zip(list(self.in_flight), waits, strict=True):
            d.addBoth(lambda r, w=w: (w.callback(None), r)[1])
        return defer.gatherResults(waits)


class JetStreamLoader:
    """Durable pull consumer -> batcher -> store; a message is acked once its row is stored.

    Exact after a crash, derived tables included: every batch it inserts is written first
    (token and rows, fdatasync-ed) to an insert journal of its own
    (``DataDirectory/jetstream/<Stream>/inserts.journal``, ``pipeline/journal.py``). A batch
    begun and not ended (the process died during the insert, or the batcher gave up on it)
    may be in ``events`` and in only some of its views; before fetching anything more the
    loader sends such a batch again with its token, from the journal, so the store writes
    exactly the missing parts. Its messages, redelivered afterwards, are then found stored
    (dedup) and acked.
    """

    def __init__(self, client: NatsClient, entry, gateway, stats: NatsStats):
        self.client = client
        self.entry = entry
        self.gateway = gateway
        self.stats = stats
        self.durable = f"{entry.Stream}_loader"
        self.outstanding = 0
        self.keys_in_flight: set[str] = set()
        self.acks: set[asyncio.Future] = set()
        self.journal = InsertJournal(gateway.cfg.data_dir / "jetstream" / entry.Stream)
        self.origin = Journaled(self.journal)
        self._journal_open = False
        self._room: asyncio.Event | None = None
        self._task: asyncio.Future | None = None
        self._stopping = False

    def start(self) -> None:
        self._room = asyncio.Event()
        self._room.set()
        self._task = asyncio.ensure_future(self._run())

    async def _subscribe(self):
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import BadRequestError

        js = self.client.js
        await ensure_stream(js, self.entry.Stream, self.entry.Subject)
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.entry.AckWaitSeconds,
            max_ack_pending=MAX_OUTSTANDING * 2,
        )
        try:
            await js.add_consumer(self.entry.Stream, config)
        except BadRequestError as e:  # exists with other settings: use it as it is
            log.warn("JetStream consumer {name}: {why}", name=self.durable, why=e.description)
        return await js.pull_subscribe_bind(durable=self.durable, stream=self.entry.Stream)

    async def _run(self) -> None:
        import nats.errors

        sub = None
        while not self._stopping:
            try:
                await self._finish_in_doubt()
                await self.client.ready.wait()
                if sub is None:
                    sub = await self._subscribe()
                    log.info("JetStream loader consuming {stream}", stream=self.entry.Stream)
                while self.outstanding >= MAX_OUTSTANDING:
                    self._room.clear()
                    await self._room.wait()
                messages = await sub.fetch(batch=FETCH_BATCH, timeout=1)
            except asyncio.CancelledError:
                return
            except nats.errors.TimeoutError:
                continue
            except Exception as e:  # noqa: BLE001 - NATS away or consumer gone: try again
                if self._stopping:
                    return
                log.warn("JetStream loader: {error}", error=f"{type(e).__name__}: {e}")
                sub = None
                await asyncio.sleep(1)
                continue
            try:
                await self._finish_in_doubt()  # a batch given up on meanwhile: before its rows
            except asyncio.CancelledError:
                return
            self._load(messages)

    def _open_journal(self):
        self.journal.path.parent.mkdir(parents=True, exist_ok=True)
        return self.journal.open()

    async def _finish_in_doubt(self) -> None:
        """Open the journal, then finish every batch in it that may be half stored; until
        that is done (the store may be down) nothing is loaded."""
        loop = asyncio.get_running_loop()
        warned = False
        while not self._stopping:
            try:
                if not self._journal_open:
                    doubtful = await deferToThread(self._open_journal).asFuture(loop)
                    self._journal_open = True
                    if doubtful:
                        log.info(
                            "JetStream loader: {n} insert(s) may have been cut short by the "
                            "last exit; finishing them",
                            n=len(doubtful),
                        )
                for batch in self.journal.in_doubt():
                    store = self.gateway.store
                    if getattr(store, "insert_tokens", False):
                        rows = batch.rows or []
                        d = finish(store, self.journal, batch, rows, "JetStream loader")
                        done = await d.asFuture(loop)
                        if done == "resent":
                            self.stats.resent += 1
                    await self.journal.end(batch.token).asFuture(loop)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the store or the disk: try again
                if not warned:  # one line per outage, not one per second
                    warned = True
                    log.warn(
                        "JetStream loader: finishing an interrupted insert failed ({error}); "
                        "retrying every second, loading nothing meanwhile",
                        error=f"{type(e).__name__}: {e}",
                    )
                await asyncio.sleep(1)

    def _load(self, messages) -> None:
        groups: dict[tuple[str, bool], list] = {}
        for msg in messages:
            headers = msg.headers or {}
            key = headers.get(MSG_ID_HEADER, "")
            if key and key in self.keys_in_flight:
                continue  # redelivered while its first copy waits for the store: acked then
            try:
                row = json.loads(msg.data)
            except ValueError:
                self.stats.poison += 1
                self._settle([msg], "term")
                continue
            redelivered = msg.metadata.num_delivered > 1
            table = headers.get(TABLE_HEADER, "events")
            groups.setdefault((table, redelivered), []).append((msg, row, key))
        for (table, redelivered), items in groups.items():
            rows = [row for _, row, _ in items]
            msgs = [msg for msg, _, _ in items]
            keys = [key for _, _, key in items if key]
            self.keys_in_flight.update(keys)
            self.outstanding += len(items)
            if redelivered:
                # an earlier delivery may have been stored before its loader died: dedup
                self.stats.redelivered += len(items)
            d = self.gateway.batcher.add(table, rows, dedup=redelivered, origin=self.origin)
            d.addCallbacks(self._stored, self._not_stored, (msgs,), None, (msgs, table))
            d.addBoth(self._done, len(items), keys)

    def _stored(self, _, msgs) -> None:
        self.stats.loaded += len(msgs)
        self._settle(msgs, "ack")

    def _not_stored(self, failure, msgs, table) -> None:
        self.stats.load_failed += len(msgs)
        log.warn(
            "JetStream loader: {n} {table} rows not stored ({why}); redelivered later",
            n=len(msgs),
            table=table,
            why=failure.getErrorMessage(),
        )
        self._settle(msgs, "nak")

    def _done(self, _, count: int, keys: list[str]) -> None:
        self.outstanding -= count
        self.keys_in_flight.difference_update(keys)
        if self.outstanding < MAX_OUTSTANDING:
            self._room.set()

    def _settle(self, msgs, how: str) -> None:
        async def settle():
            for msg in msgs:
                try:
                    if how == "ack":
                        await msg.ack()
                    elif how == "nak":
                        await msg.nak(delay=5)
                    else:
                        await msg.term()
                except Exception:  # noqa: BLE001 - unacked: JetStream redelivers after AckWait
                    pass

        future = asyncio.ensure_future(settle())
        self.acks.add(future)
        future.add_done_callback(self.acks.discard)

    def stop(self) -> defer.Deferred:
        """Stop fetching, store what was fetched, send the acks."""
        self._stopping = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        d = self.gateway.batcher.flush_all()

        async def acks_sent():
            for _ in range(100):  # rows still in the store's hands finish within seconds
                if not self.outstanding:
                    break
                await asyncio.sleep(0.05)
            if self.acks:
                await asyncio.gather(*list(self.acks), return_exceptions=True)
            self.journal.close()  # what is still in flight is in doubt at the next start

        d.addCallback(lambda _: deferred(acks_sent()))
        return d


# --------------------------------------------------------------------------- wiring


class NatsNotifier:
    """Everything one ``nats`` Notify entry runs: a client, and a publisher or JetStream parts."""

    def __init__(self, entry, index: int, gateway):
        self.entry = entry
        self.gateway = gateway
        self.stats = NatsStats()
        self.client = NatsClient(entry, index, self.stats)
        self.publisher: EventPublisher | None = None
        self.loader: JetStreamLoader | None = None
        if entry.JetStream:
            batcher = gateway.batcher if entry.Loader else None
            gateway.intake = JetStreamIntake(self.client, entry, self.stats, batcher)
            log.info(
                "durability: the JetStream stream {stream} is the spool (acknowledged after its "
                "PubAck; the local spool and Durability are not used)",
                stream=entry.Stream,
            )
            if entry.Loader:
                self.loader = JetStreamLoader(self.client, entry, gateway, self.stats)
        else:
            self.publisher = EventPublisher(self.client, entry.Subject, self.stats)
        gateway.metric_sources.append(self.metrics)

    def start(self) -> defer.Deferred:
        d = self.client.start()
        if self.loader is not None:
            d.addCallback(lambda _: self.loader.start())
        return d

    @defer.inlineCallbacks
    def stop(self):
        if self.loader is not None:
            yield self.loader.stop()
        yield self.client.stop()

    def metrics(self):
        st, labels = self.stats, [self.entry.Subject]

        def family(cls, name, doc, value):
            metric = cls(name, doc, labels=["subject"])
            metric.add_metric(labels, value)
            return metric

        yield family(
            GaugeMetricFamily,
            "sfpl_nats_connected",
            "1 when NATS is connected",
            self.client.connected,
        )
        yield family(CounterMetricFamily, "sfpl_nats_connects", "NATS (re)connections", st.connects)
        yield family(
            CounterMetricFamily, "sfpl_nats_published", "Events published on NATS", st.published
        )
        yield family(
            CounterMetricFamily,
            "sfpl_nats_publish_failed",
            "Events that could not be published on NATS",
            st.publish_failed,
        )
        if self.entry.JetStream:
            yield family(
                CounterMetricFamily,
                "sfpl_jetstream_published",
                "Records stored by JetStream (acknowledged to clients)",
                st.js_published,
            )
            yield family(
                CounterMetricFamily,
                "sfpl_jetstream_refused",
                "Records refused (503) because JetStream did not store them",
                st.js_refused,
            )
            yield family(
                CounterMetricFamily,
                "sfpl_jetstream_loaded",
                "Records loaded into the store",
                st.loaded,
            )
            yield family(
                CounterMetricFamily,
                "sfpl_jetstream_redelivered",
                "Records redelivered to the loader (inserted with dedup)",
                st.redelivered,
            )
            yield family(
                CounterMetricFamily,
                "sfpl_jetstream_load_failed",
                "Records the store refused (nak, redelivered)",
                st.load_failed,
            )


def attach(gateway) -> list[NatsNotifier]:
    """The NATS notifiers of ``gateway.cfg``; plain publishers wrap ``gateway.intake``."""
    from sfpltracker.notify.reactor import nats_entries, require

    entries = nats_entries(gateway.cfg)
    if not entries:
        return []
    require(gateway.reactor, entries[0][0])
    notifiers = [NatsNotifier(entry, i, gateway) for i, entry in entries]
    publishers = [n.publisher for n in notifiers if n.publisher is not None]
    if publishers:
        gateway.intake = PublishingIntake(gateway.intake, publishers)
    return notifiers


def _without_userinfo(url: str) -> str:
    """``nats://user:password@host:4222`` -> ``nats://host:4222``."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return scheme + sep + netloc.rpartition("@")[2] + slash + path
