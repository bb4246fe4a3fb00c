"""JetStream as the spool: the intake that is acknowledged by the stream, and its loader.

With ``"JetStream": true`` on a ``nats`` Notify entry the stream ``Stream`` is the gateway's
spool (``JetStreamIntake``): a record is acknowledged to the client once JetStream stored it,
published with its ``eid`` as ``Nats-Msg-Id`` so a client's retry within the stream's duplicate
window is dropped by the server. With ``"Loader": true`` (the default) the gateway also runs the
loader (``JetStreamLoader``): a durable pull consumer with explicit acks that feeds the batcher
and acks a message only once its row is in the store; a message that may be stored already (a
redelivery after a loader died between insert and ack, or one in the stream when the loader
subscribed: ``one_per_message``) is inserted with the store's dedup, so every eid is stored
once, and a
batch the loader was inserting when it died is finished from its insert journal first, so the
derived tables (views) count it once too. Several gateways can publish into one stream; every
loader on the same durable consumer shares the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from sfpltracker.notify.nats_client import (
    DUPLICATE_WINDOW,
    MSG_ID_HEADER,
    TABLE_HEADER,
    NatsClient,
    NatsStats,
    deferred,
    message_id,
    subject_for,
    to_json,
)
from sfpltracker.pipeline.batcher import Batcher
from sfpltracker.pipeline.intake import Refused
from sfpltracker.pipeline.journal import InsertJournal, Journaled, finish
from sfpltracker.store.interface import TokenStore, token_store

log = Logger()

FETCH_BATCH = 1000  # messages per loader fetch
CONSUMER_CHECK_SECONDS = 5.0  # while fetches come back empty, whether the consumer exists
EVERYTHING = 2**63  # a stream sequence above any: every message may be stored already
MAX_OUTSTANDING = 20_000  # loader messages fetched but not yet stored and acked


_unbounded_warned: set[str] = set()


async def ensure_stream(js, stream: str, subject: str) -> None:
    """Create the stream if missing (idempotent; every gateway and loader calls it).

    As a work queue: JetStream deletes a message once the loader acked it (stored). With the
    default retention (limits) and no limit every event ever published stayed in the stream,
    until the NATS server's storage was full and every publish, so every request, failed.
    A stream made so before is kept as it is (its retention cannot be changed): warned about.
    """
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import BadRequestError, NotFoundError

    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        config = StreamConfig(
            name=stream,
            subjects=[subject, f"{subject}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
        )
        try:
            await js.add_stream(config)
        except BadRequestError as e:  # created meanwhile by another gateway
            if e.err_code != 10058:
                raise
        return
    c = info.config
    unbounded = not (c.max_age or (c.max_bytes or -1) > 0 or (c.max_msgs or -1) > 0)
    if c.retention == RetentionPolicy.LIMITS and unbounded and stream not in _unbounded_warned:
        _unbounded_warned.add(stream)
        log.warn(
            "JetStream stream {stream} keeps every message (retention limits, no limit): it "
            "grows until NATS refuses publishes. Once it is drained, delete it and let the "
            "gateway make it again as a work queue (docs/websocket-nats.md)",
            stream=stream,
        )
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

    def start(self) -> defer.Deferred:
        return defer.succeed(None)  # the notifier that built it connects the client

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
            "fetched_twice_records": st.copies,
        }

    def close(self) -> defer.Deferred:
        """Wait for the publishes in flight (their clients are waiting for the answer)."""
        waits: list[defer.Deferred[None]] = [defer.Deferred() for _ in self.in_flight]
        for d, w in zip(list(self.in_flight), waits, strict=True):
            d.addBoth(_also_fire, w)
        return defer.gatherResults(waits)


async def _unsubscribe(sub) -> None:
    """Else an abandoned subscription keeps taking what its pulls still deliver, for no one."""
    if sub is not None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _also_fire(result: object, other: defer.Deferred[None]) -> object:
    other.callback(None)
    return result


@dataclass
class Fetched:
    """One message of a fetch: its row, and every copy of it the fetch held (each is acked)."""

    key: str  # Nats-Msg-Id ("" when a publisher set none)
    table: str
    row: dict
    copies: list
    maybe_stored: bool  # delivered before, or older than the mark: inserted with dedup


def one_per_message(
    messages, in_flight: set[str], stored_before: int
) -> tuple[list[Fetched], list]:
    """The messages of one fetch, each once, and the poison (not JSON) to terminate.

    A message may have been stored already (it is inserted with dedup) when JetStream
    delivered it before (``num_delivered`` > 1), or when it was in the stream at the last
    (re)subscription or (re)connection (stream sequence <= ``stored_before``): a delivery
    count starts again at 1 when the consumer is made anew (deleted by an operator, then
    re-created by the loader with DeliverPolicy ALL: the whole stream comes again), or when a
    restarted nats-server lost the consumer's last acks and deliveries. Only a message
    published since, and delivered for the first time, is certainly new.

    A message whose key waits for the store already (``in_flight``: JetStream redelivered
    it meanwhile) is left out; its first copy's ack settles it. A fetch can also hold *two
    copies* of one message: nats-py keeps what arrives for a pull after its fetch returned
    and hands it out with the next fetch, and when that comes after AckWait (the loader
    waited for room, or for the store), JetStream has delivered the message again and the
    next fetch holds both (shown on a real server in tests/test_jetstream_copies.py). Loaded
    twice they were inserted twice, the first copy without dedup; so the copies are merged
    into one row, marked as possibly stored, and every copy is acked.
    """
    fetched: dict[object, Fetched] = {}
    poison = []
    for msg in messages:
        headers = msg.headers or {}
        key = headers.get(MSG_ID_HEADER, "")
        if key and key in in_flight:
            continue
        meta = msg.metadata
        redelivered = meta.num_delivered > 1 or meta.sequence.stream <= stored_before
        # The copies share the key, and the stream sequence when a publisher set no key.
        which = key or meta.sequence.stream
        same = fetched.get(which)
        if same is not None:
            same.copies.append(msg)
            same.maybe_stored = True
            continue
        try:
            row = json.loads(msg.data)
        except ValueError:
            poison.append(msg)
            continue
        table = headers.get(TABLE_HEADER, "events")
        fetched[which] = Fetched(key, table, row, [msg], redelivered)
    return list(fetched.values()), poison


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

    def __init__(
        self, client: NatsClient, entry, stats: NatsStats, *, batcher: Batcher, data_dir: Path
    ):
        self.client = client
        self.entry = entry
        self.batcher = batcher
        # Asked once: a store with insert tokens finishes a batch cut short from the journal.
        self.token_store: TokenStore | None = token_store(batcher.store)
        self.stats = stats
        self.durable = f"{entry.Stream}_loader"
        self.outstanding = 0
        self.keys_in_flight: set[str] = set()
        self.acks: set[asyncio.Future] = set()
        self.journal = InsertJournal(data_dir / "jetstream" / entry.Stream)
        self.origin = Journaled(self.journal)
        self._journal_open = False
        self._room: asyncio.Event = asyncio.Event()
        self._task: asyncio.Future | None = None
        self._stopping = False
        # The stream's last sequence when this loader last subscribed or NATS last connected,
        # and the connection it was read on (stats.connects): what the stream held then may
        # have been stored already, delivered or not (see ``one_per_message``).
        self.stored_before = EVERYTHING
        self.stored_before_on: int | None = None
        self._consumer_checked = 0.0

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
        sub = None
        while not self._stopping:
            try:
                await self._finish_in_doubt()
                await self.client.ready.wait()
                if sub is None:
                    sub = await self._subscribe()
                    log.info("JetStream loader consuming {stream}", stream=self.entry.Stream)
                    self.stored_before_on = None
                if self.stored_before_on != self.stats.connects:
                    connection = self.stats.connects
                    info = await self.client.js.stream_info(self.entry.Stream)
                    self.stored_before = info.state.last_seq
                    self.stored_before_on = connection
                while self.outstanding >= MAX_OUTSTANDING:
                    self._room.clear()
                    await self._room.wait()
                try:
                    messages = await sub.fetch(batch=FETCH_BATCH, timeout=1)
                except TimeoutError:
                    # Nothing to fetch (nats-py raises its own TimeoutError or asyncio's) - or
                    # no consumer any more: a pull for a deleted one gets no answer at all.
                    if await self._consumer_gone():
                        await _unsubscribe(sub)
                        sub = None
                    continue
            except asyncio.CancelledError:
                return
            except Exception as e:  # noqa: BLE001 - NATS away or consumer gone: try again
                if self._stopping:
                    return
                log.warn("JetStream loader: {error}", error=f"{type(e).__name__}: {e}")
                await _unsubscribe(sub)
                sub = None
                await asyncio.sleep(1)
                continue
            try:
                await self._finish_in_doubt()  # a batch given up on meanwhile: before its rows
            except asyncio.CancelledError:
                return
            self._load(messages)

    async def _consumer_gone(self) -> bool:
        """Whether the durable consumer was deleted (asked at most every few seconds)."""
        from nats.js.errors import NotFoundError

        now = time.monotonic()
        if now - self._consumer_checked < CONSUMER_CHECK_SECONDS:
            return False
        self._consumer_checked = now
        try:
            await self.client.js.consumer_info(self.entry.Stream, self.durable)
        except NotFoundError:
            log.warn(
                "JetStream loader: consumer {name} was deleted; making it anew (what the "
                "stream holds comes again and is loaded with dedup)",
                name=self.durable,
            )
            return True
        return False

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
                    store = self.token_store
                    if store is not None:
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
        groups: dict[tuple[str, bool], list[Fetched]] = {}
        # NATS reconnected since the mark was read: anything fetched may be from before.
        same_connection = self.stored_before_on == self.stats.connects
        stored_before = self.stored_before if same_connection else EVERYTHING
        fetched, poison = one_per_message(messages, self.keys_in_flight, stored_before)
        twice = sum(len(item.copies) > 1 for item in fetched)
        if twice:
            self.stats.copies += twice
            log.info(
                "JetStream loader: a fetch held {n} message(s) twice (delivered again after "
                "AckWait while the first copy waited in the client); each loaded once",
                n=twice,
            )
        if poison:
            self.stats.poison += len(poison)
            self._settle(poison, "term")
        for item in fetched:
            groups.setdefault((item.table, item.maybe_stored), []).append(item)
        for (table, maybe_stored), items in groups.items():
            rows = [item.row for item in items]
            msgs = [msg for item in items for msg in item.copies]
            keys = [item.key for item in items if item.key]
            self.keys_in_flight.update(keys)
            self.outstanding += len(items)
            if maybe_stored:
                self.stats.redelivered += len(items)
            d = self.batcher.add(table, rows, dedup=maybe_stored, origin=self.origin)
            d.addCallbacks(
                self._stored, self._not_stored, (msgs, len(items)), {}, (msgs, len(items), table)
            )
            d.addBoth(self._done, len(items), keys)

    def _stored(self, _, msgs, count: int) -> None:
        self.stats.loaded += count
        self._settle(msgs, "ack")

    def _not_stored(self, failure, msgs, count: int, table) -> None:
        self.stats.load_failed += count  # rows, as ``loaded`` (a fetch's copies count once)
        log.warn(
            "JetStream loader: {n} {table} messages not stored ({why}); redelivered later",
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
        d = self.batcher.flush_all()

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
