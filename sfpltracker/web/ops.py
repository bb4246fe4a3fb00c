"""Operations routes: ``/health``, ``/ping``, ``/status``, ``/metrics``, ``/clear``.

None of them is tracked (the original counted every health probe as a short-link hit).
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

from sfpltracker.web.common import apply_cors, header, write_json


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, gateway):
        super().__init__()
        self.gateway = gateway


class HealthResource(_Leaf):
    def render_GET(self, request):
        health = self.gateway.health()
        status = 503 if health["status"] == "down" else 200
        request.setHeader(b"cache-control", b"no-store")
        return write_json(request, status, health)


class PingResource(_Leaf):
    def render_GET(self, request):
        apply_cors(request, self.gateway.cfg.AllowOrigin)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"pong"


class StatusResource(_Leaf):
    def render_GET(self, request):
        gw = self.gateway
        apply_cors(request, gw.cfg.AllowOrigin)
        peer = getattr(request.getClientAddress(), "host", "")
        return write_json(
            request,
            200,
            {
                "client": gw.trusted_proxies.client_ip(peer, _headers(request)),
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


def seed_metrics(gw) -> dict:
    """The original's ``/metrics`` JSON shape, every number measured."""
    uptime = max(time.time() - gw.started_at, 1e-9)
    batching = gw.batcher.report()
    accepted = gw.counters["events_accepted"]
    health = gw.health()["status"]
    return {
        "metrics": {
            "event_count": accepted,
            "error_count": gw.counters["events_rejected"] + batching["failed_batches"],
            "payments_count": gw.counters["payments_accepted"],
            "refused_requests": gw.counters["requests_refused"],
            "connection_count": gw.open_connections,
            "health_status": {"ok": "healthy", "degraded": "degraded"}.get(health, "unhealthy"),
            "start_time_unix": int(gw.started_at),
        },
        "batching": batching,
        "calculated": {
            "uptime_seconds": round(uptime, 3),
            "events_per_second": round(accepted / uptime, 3),
            "batch_success_rate": batching["batch_success_rate"],
            "avg_items_per_batch": batching["avg_batch_size"],
        },
        "spool": gw.intake.health().get("spool"),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
    }


class GatewayCollector:
    """Reads the gateway's counters at scrape time, so the numbers are never stale."""

    def __init__(self, gateway):
        self.gateway = gateway

    def collect(self):
        gw = self.gateway
        b = gw.batcher.report()
        yield CounterMetricFamily(
            "sfpl_events_accepted", "Events acknowledged to clients", gw.counters["events_accepted"]
        )
        yield CounterMetricFamily(
            "sfpl_events_rejected", "Events refused as malformed", gw.counters["events_rejected"]
        )
        yield CounterMetricFamily(
            "sfpl_requests_refused", "Requests answered 503", gw.counters["requests_refused"]
        )
        yield CounterMetricFamily(
            "sfpl_payments_accepted", "Payment rows acknowledged", gw.counters["payments_accepted"]
        )
        yield CounterMetricFamily("sfpl_batches_stored", "Batches stored", b["total_batches"])
        yield CounterMetricFamily("sfpl_rows_stored", "Rows stored", b["total_items"])
        yield CounterMetricFamily(
            "sfpl_batches_failed", "Batches given up after retries", b["failed_batches"]
        )
        yield CounterMetricFamily(
            "sfpl_insert_attempts_failed", "Failed insert attempts", b["failed_attempts"]
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
