"""NATS: real-time fan-out of accepted events, and JetStream as a shared spool between gateways.

A ``Notify`` entry ``{"Type": "nats", "Hosts": [...], "Subject": "toc.track.notify"}``:

* plain mode: every accepted event row is published as JSON on ``Subject`` after the intake
  accepted it (``PublishingIntake``). Publishing never delays or fails the client's answer:
  rows wait in a bounded queue, nats-py buffers them while it reconnects, and whatever cannot be
  sent is counted (``sfpl_nats_publish_failed_total``), not retried.
* ``"JetStream": true``: the stream ``Stream`` is the gateway's spool, and the gateway may run
  its loader: ``pipeline/jetstream.py`` (``JetStreamIntake``, ``JetStreamLoader``); this
  module's ``NatsNotifier`` builds them for the entry, and the composition root (``gateway.py``)
  takes the intake.

Events go on ``Subject`` (so real-time subscribers see the same JSON in both modes); other
tables' rows (payments, ...) go on ``Subject.<table>``, with the table in the ``Sfpl-Table``
header. nats-py is asyncio code: the gateway runs on Twisted's asyncio reactor
(``notify.reactor``) and coroutines are bridged with ``Deferred.fromFuture`` / ``asFuture``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import defer
from twisted.logger import Logger

from sfpltracker.notify.consumer import Consumer
from sfpltracker.notify.nats_client import NatsClient, NatsStats, deferred, to_json
from sfpltracker.pipeline.batcher import Batcher
from sfpltracker.pipeline.jetstream import JetStreamIntake, JetStreamLoader
from sfpltracker.privacy.ip import IPPolicy
from sfpltracker.store.interface import Intake, MetricSource

# --------------------------------------------------------------------------- plain publish

log = Logger()

PUBLISH_QUEUE = 100_000  # rows waiting for the plain publisher before new ones are dropped


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

    def __init__(self, inner: Intake, publishers: list[EventPublisher]):
        self.inner = inner
        self.publishers = publishers

    def start(self) -> defer.Deferred:
        return self.inner.start()

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

    def health(self) -> dict:
        return self.inner.health()

    def close(self) -> defer.Deferred:
        return self.inner.close()

    def metric_families(self):
        return self.inner.metric_families() if isinstance(self.inner, MetricSource) else ()


# --------------------------------------------------------------------------- wiring


class NatsNotifier:
    """Everything one ``nats`` Notify entry runs: a client, and a publisher or JetStream parts.

    Built by the gateway (the composition root), which takes ``intake`` (JetStream as the
    spool) or ``publisher`` (wrapping its intake) from here; nothing here changes the gateway.
    """

    def __init__(self, entry, index: int, *, batcher: Batcher, data_dir: Path):
        self.entry = entry
        self.index = index
        self.stats = NatsStats()
        # Workers > 1, in a worker: the counters over every process (the supervisor's totals,
        # ``Gateway.total_counters``), so /metrics counts every worker's publishing and the
        # store process's loading whichever worker answers.
        self.totals: Callable[[], dict[str, int]] | None = None
        self.client = NatsClient(entry, index, self.stats)
        self.publisher: EventPublisher | None = None
        self.intake: JetStreamIntake | None = None
        self.loader: JetStreamLoader | None = None
        # "Consume": the original's tic.* messages; the root hands it the intake (consume_into)
        self.consumer = Consumer(self.client, entry.ConsumeSubjects) if entry.Consume else None
        if entry.JetStream:
            self.intake = JetStreamIntake(
                self.client, entry, self.stats, batcher if entry.Loader else None
            )
            if entry.Loader:
                self.loader = JetStreamLoader(
                    self.client, entry, self.stats, batcher=batcher, data_dir=data_dir
                )
        elif entry.Publish:
            self.publisher = EventPublisher(self.client, entry.Subject, self.stats)
        # Workers > 1: a worker whose stream is the spool waits (up to Timeout) for NATS
        # before it listens, so the other workers take the connections meanwhile instead of
        # it answering 503 after every restart.
        self.connect_before_listening = False

    def consume_into(self, intake: Intake, ip_policy: IPPolicy) -> None:
        """Where consumed messages' rows go: the gateway's intake, given by the root, with
        the ``IPMode`` their IPs get."""
        if self.consumer is not None:
            self.consumer.consume_into(intake, ip_policy)

    def start(self) -> defer.Deferred:
        d = self.client.start()
        if self.connect_before_listening and self.intake is not None:
            d.addCallback(lambda _: deferred(self.client.connected_within(self.entry.Timeout)))
        if self.consumer is not None:
            self.consumer.start()
        loader = self.loader
        if loader is not None:
            d.addCallback(lambda _: loader.start())
        return d

    @defer.inlineCallbacks
    def stop(self):
        if self.consumer is not None:
            self.consumer.stop()
        if self.loader is not None:
            yield self.loader.stop()
        yield self.client.stop()

    def counters(self) -> dict[str, int]:
        """This process's counts, for the supervisor's totals (summed over the processes)."""
        return {f"nats_{k}:{self.index}": n for k, n in dataclasses.asdict(self.stats).items()}

    def _counted(self) -> NatsStats:
        if self.totals is None:
            return self.stats
        totals = self.totals()
        return NatsStats(
            **{
                k: totals.get(f"nats_{k}:{self.index}", n)
                for k, n in dataclasses.asdict(self.stats).items()
            }
        )

    def metrics(self):
        st, labels = self._counted(), [self.entry.Subject]

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
        if self.consumer is not None:
            cs = self.consumer.stats
            yield family(
                CounterMetricFamily,
                "sfpl_nats_consumed",
                "tic.* messages handed to the intake",
                cs.accepted,
            )
            yield family(
                CounterMetricFamily,
                "sfpl_nats_consume_rejected",
                "tic.* messages not stored: malformed, or the intake refused them",
                cs.rejected + cs.failed,
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
                "Records loaded with dedup (redelivered, or in the stream when the loader subscribed)",
                st.redelivered,
            )
            yield family(
                CounterMetricFamily,
                "sfpl_jetstream_copies",
                "Messages a loader fetch held twice (delivered again after AckWait); loaded once",
                st.copies,
            )
            yield family(
                CounterMetricFamily,
                "sfpl_jetstream_load_failed",
                "Records the store refused (nak, redelivered)",
                st.load_failed,
            )


def make_notifiers(cfg, reactor, batcher: Batcher, worker: bool = False) -> list[NatsNotifier]:
    """One notifier per ``nats`` Notify entry of ``cfg`` (none: NATS is not loaded).

    ``worker`` (Workers > 1): a worker only publishes into a JetStream stream; the store
    process runs the entry's loader (one durable consumer, one insert journal)."""
    from sfpltracker.notify.reactor import nats_entries, require

    entries = nats_entries(cfg)
    if not entries:
        return []
    require(reactor, entries[0][0])
    if worker:
        entries = [(i, dataclasses.replace(e, Loader=False)) for i, e in entries]  # type: ignore[type-var]
    notifiers = [NatsNotifier(e, i, batcher=batcher, data_dir=cfg.data_dir) for i, e in entries]
    for notifier in notifiers:
        notifier.connect_before_listening = worker
    return notifiers
