"""Operations routes: ``/health``, ``/ping``, ``/status``, ``/metrics``, ``/clear``.

None of them is tracked (the original counted every health probe as a short-link hit).

``/status`` and ``/metrics`` answer by default in the original tracker's shapes, which its
clients parse; ``/status?format=object`` is this gateway's richer object (see
``answer_format``). ``/metrics`` gives Prometheus text to a scraper that asks for it.
``/health`` is API.md's object with the original's metrics keys alongside.
"""

from __future__ import annotations

import datetime
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_TYPE,
)
from prometheus_client.openmetrics.exposition import (
    generate_latest as generate_openmetrics,
)
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from sfpltracker.web.common import apply_cors, error, header, write_json

# ``?format=`` values: absent -> the original tracker's shape, ``object`` -> ours.
FORMATS = ("original", "object")


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, gateway):
        super().__init__()
        self.gateway = gateway


class HealthResource(_Leaf):
    """API.md's ``{"status", "store", "spool"}``, 503 when events are not accepted; with the
    original's keys alongside (``metrics``, ``batching``, ``calculated``, ``timestamp``): it
    answered its metrics JSON on ``/health``, and its clients read ``metrics.health_status``."""

    def render_GET(self, request):
        health = self.gateway.health()
        status = 503 if health["status"] == "down" else 200
        request.setHeader(b"cache-control", b"no-store")
        return write_json(request, status, {**seed_metrics(self.gateway, health), **health})


class PingResource(_Leaf):
    def render_GET(self, request):
        apply_cors(request, self.gateway.cfg.AllowOrigin)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"pong"


def answer_format(request) -> str | None:
    """``?format=`` of an answer the original shaped differently: ``original`` (the default,
    what its clients parse) or ``object`` (this gateway's record); None for anything else."""
    asked = ((request.args or {}).get(b"format") or [b"original"])[0].decode("latin-1")
    asked = asked.strip().lower() or "original"
    return asked if asked in FORMATS else None


def bad_format(request) -> bytes:
    return error(request, 400, "format must be 'object' (or absent for the original's shape)")


class StatusResource(_Leaf):
    def render_GET(self, request):
        gw = self.gateway
        apply_cors(request, gw.cfg.AllowOrigin)
        shape = answer_format(request)
        if shape is None:
            return bad_format(request)
        peer = getattr(request.getClientAddress(), "host", "")
        client = gw.trusted_proxies.client_ip(peer, _headers(request))
        if shape == "original":
            # The original's Go ``[]struct{Key, Value}``: clients read it by position or Key.
            return write_json(
                request,
                200,
                [
                    {"Key": "client", "Value": client},
                    {"Key": "conns", "Value": gw.open_connections},
                ],
            )
        return write_json(
            request,
            200,
            {
                "client": client,
                "conns": gw.open_connections,
                "uptime_seconds": round(time.time() - gw.started_at, 3),
                "version": gw.version,
            },
        )


class ClearResource(_Leaf):
    def render_GET(self, request):
        apply_cors(request, self.gateway.cfg.AllowOrigin)
        request.setHeader(b"clear-site-data", b'"cookies", "storage"')
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"OK"


class MetricsResource(_Leaf):
    """Prometheus text when the scraper asks for it, else the seed README's JSON."""

    def __init__(self, gateway):
        super().__init__(gateway)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(gateway))

    def render_GET(self, request):
        refreshing = self.gateway.refresh_totals()  # Workers > 1: the totals asked for now
        if refreshing is None:
            return self._render(request)
        gone: list = []
        request.notifyFinish().addErrback(gone.append)

        def answer(_):
            if not gone:
                request.write(self._render(request))
                request.finish()

        refreshing.addBoth(answer)
        return NOT_DONE_YET

    def _render(self, request) -> bytes:
        accept = header(request, "accept")
        if "application/openmetrics-text" in accept:
            request.setHeader(b"content-type", OPENMETRICS_TYPE.encode())
            return generate_openmetrics(self.registry)
        if "text/plain" in accept:
            request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
            return generate_latest(self.registry)
        return write_json(request, 200, seed_metrics(self.gateway))


def _headers(request) -> dict[str, str]:
    return {
        k.decode("latin-1").lower(): v[0].decode("latin-1")
        for k, v in request.requestHeaders.getAllRawHeaders()
        if v
    }


def note_acknowledged(gw, events: int, started_ns: int) -> None:
    """``events`` were acknowledged to a client whose request was taken up at ``started_ns``
    (``time.monotonic_ns()``): the original's ``total_latency_ns`` and ``last_processed_unix``."""
    if events <= 0:
        return
    # (``gw.count``'s sums written out: this runs for every acknowledged request)
    counters = gw.counters
    latency = (time.monotonic_ns() - started_ns) * events
    counters["total_latency_ns"] = counters.get("total_latency_ns", 0) + latency
    counters["timed_events"] = counters.get("timed_events", 0) + events
    # a moment, not a count: kept with the counters so /metrics reads them together
    counters["last_processed_unix"] = int(time.time())


def _rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def seed_metrics(gw, health: dict | None = None) -> dict:
    """The original's ``/metrics`` JSON, key for key, every number measured here.

    - ``event_count``: events acknowledged to clients; ``error_count``: events refused as
      malformed plus batches given up; ``error_rate`` = error_count / max(event_count, 1).
    - ``mthreads_ops``, ``mstore_ops``, ``mtriage_ops``: rows written to those tables;
      ``campaign_events``: events of a message thread (``tid``) written, one ``mthreads`` row
      each, as the original counted one per campaign event.
    - ``total_latency_ns``: summed per event, from the request being taken up to its durable
      acknowledgement, on the HTTP tracking routes (``/tr/``, ``/str/``, ``/img/``) and for
      WebSocket messages (from the socket read that brought them);
      ``avg_latency_ms`` divides it by the events so timed.
    - ``last_processed_unix``: when an event was last acknowledged (0: none yet).
    """
    c = gw.total_counters()  # Workers > 1: over every process
    uptime = max(time.time() - gw.started_at, 1e-9)
    batching = gw.batcher.report()
    by_table = gw.batcher.stats.rows_by_table
    if "rows_stored" in c:  # Workers > 1: what the store process's batchers stored
        by_table = {
            k[len("rows_stored_") :]: n for k, n in c.items() if k.startswith("rows_stored_")
        }
        batching["total_batches"] = c["batches_stored"]
        batching["total_items"] = c["rows_stored"]
        batching["failed_batches"] = c.get("batches_failed", 0)
    accepted = c.get("events_accepted", 0)
    errors = c.get("events_rejected", 0) + batching["failed_batches"]
    health = health or gw.health()
    # The original rendered the last flush as RFC 3339 always (the epoch before any flush).
    batching["last_flush_time"] = batching["last_flush_time"] or _rfc3339(0)
    return {
        "metrics": {
            "event_count": accepted,
            "error_count": errors,
            "campaign_events": by_table.get("mthreads", 0),
            "mthreads_ops": by_table.get("mthreads", 0),
            "mstore_ops": by_table.get("mstore", 0),
            "mtriage_ops": by_table.get("mtriage", 0),
            "total_latency_ns": c.get("total_latency_ns", 0),
            "last_processed_unix": c.get("last_processed_unix", 0),
            "payments_count": c.get("payments_accepted", 0),
            "refused_requests": c.get("requests_refused", 0),
            "connection_count": gw.open_connections,
            "health_status": {"ok": "healthy", "degraded": "degraded"}.get(
                health["status"], "unhealthy"
            ),
            "start_time_unix": int(gw.started_at),
        },
        "batching": batching,
        "calculated": {
            "avg_latency_ms": round(
                c.get("total_latency_ns", 0) / 1e6 / max(c.get("timed_events", 0), 1), 3
            ),
            "error_rate": round(errors / max(accepted, 1), 4),
            "uptime_seconds": round(uptime, 3),
            "events_per_second": round(accepted / uptime, 3),
            "batch_success_rate": batching["batch_success_rate"],
            "avg_items_per_batch": batching["avg_batch_size"],
        },
        "spool": health.get("spool"),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
    }


class GatewayCollector:
    """Reads the gateway's counters at scrape time, so the numbers are never stale."""

    def __init__(self, gateway):
        self.gateway = gateway

    def collect(self):
        gw = self.gateway
        b = gw.batcher.report()
        c = gw.total_counters()  # Workers > 1: over every process
        yield CounterMetricFamily(
            "sfpl_events_accepted", "Events acknowledged to clients", c.get("events_accepted", 0)
        )
        yield CounterMetricFamily(
            "sfpl_events_rejected", "Events refused as malformed", c.get("events_rejected", 0)
        )
        yield CounterMetricFamily(
            "sfpl_requests_refused", "Requests answered 503", c.get("requests_refused", 0)
        )
        yield CounterMetricFamily(
            "sfpl_payments_accepted", "Payment rows acknowledged", c.get("payments_accepted", 0)
        )
        # Workers > 1: the store process's batchers, through the supervisor's totals
        yield CounterMetricFamily(
            "sfpl_batches_stored", "Batches stored", c.get("batches_stored", b["total_batches"])
        )
        yield CounterMetricFamily(
            "sfpl_rows_stored", "Rows stored", c.get("rows_stored", b["total_items"])
        )
        yield CounterMetricFamily(
            "sfpl_batches_failed",
            "Batches given up after retries",
            c.get("batches_failed", b["failed_batches"]),
        )
        yield CounterMetricFamily(
            "sfpl_insert_attempts_failed",
            "Failed insert attempts",
            c.get("insert_attempts_failed", b["failed_attempts"]),
        )
        yield GaugeMetricFamily(
            "sfpl_rows_queued", "Rows waiting in the batcher", b["queued_items"]
        )
        yield GaugeMetricFamily(
            "sfpl_flush_latency_avg_seconds",
            "Mean store insert latency",
            b["avg_flush_latency_ms"] / 1000,
        )
        yield GaugeMetricFamily(
            "sfpl_open_connections", "Open client connections", gw.open_connections
        )
        healthy = GaugeMetricFamily("sfpl_up", "1 when events are being accepted")
        healthy.add_metric([], 0 if gw.health()["status"] == "down" else 1)
        yield healthy
        yield from gw.extra_metrics()
