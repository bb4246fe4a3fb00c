"""The OpenAPI 3.1 description of the public HTTP routes, served at ``/tr/v1/openapi.json``.

Written here in Python, not as a static file, because the paths depend on ``ApiVersion`` and
the shared parts (the error answer, the 503 with ``Retry-After``, the free-form event) are
written once. Kept by hand: a route added in ``web/site.py`` gets its operation here, and
``tests/test_openapi.py`` fuzzes every operation against a live gateway (schemathesis), so a
description that drifts from the code fails there.

Not described: the WebSocket frames of ``/tr/v1/ws`` (only its HTTP answer), short-link hits
(``/<slug>`` on a host with links: a fallback, not an API), proxy routes and static sites
(``Sites``), and the query listener's ClickHouse HTTP interface and dashboard page; the
dashboard's JSON API (``/dashboard/api/``) is described, with the query listener
(``QueryPort``) as the ``servers`` of each of its paths.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource

from sfpltracker.web.common import apply_cors

JSON = "application/json"
UUID = {"type": "string", "format": "uuid"}

# ---------------------------------------------------------------------------- shared parts


def _ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _answers(*codes: int | str, **custom: dict) -> dict:
    """Responses: the shared ones named by code, plus ``custom`` (``_200={...}``)."""
    out = {str(code): _ref("responses", _SHARED[int(code)]) for code in codes}
    out.update({name.lstrip("_"): value for name, value in custom.items()})
    return out


_SHARED = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    429: "TooManyRequests",
    503: "Unavailable",
}

# Answered by the edge on any route: a bad Host or target (400), over MaxConnections (503).
EDGE = (400, 503)
# Ingestion routes also count against RateLimitPerDay (429).
INGEST = (*EDGE, 429)


def _components() -> dict:
    error = _ref("schemas", "Error")
    retry_after = {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 0},
    }
    return {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string", "description": "why, in one line"}},
            },
            "Event": {
                "type": "object",
                "description": (
                    "One event. Known fields are typed (a wrongly typed value is coerced or "
                    "dropped for that field alone); unknown keys go to `params`. Keys are "
                    "case-insensitive; `utm_` prefixes are dropped."
                ),
                "properties": {
                    "eid": {**UUID, "description": "event id, the dedup key (else a UUIDv7)"},
                    "vid": {**UUID, "description": "visitor id (cookie first)"},
                    "sid": {**UUID, "description": "session id (cookie first)"},
                    "uid": UUID,
                    "ename": {"type": "string", "examples": ["page_view"]},
                    "etyp": {"type": "string", "examples": ["view"]},
                    "url": {"type": "string"},
                    "source": {"type": "string"},
                    "medium": {"type": "string"},
                    "campaign": {"type": "string"},
                    "tz": {"type": "string", "examples": ["America/Los_Angeles"]},
                    "tid": {**UUID, "description": "message thread: also writes mthreads"},
                },
                "additionalProperties": True,
            },
            **_dashboard_schemas(),
            "Events": {
                "description": "one event, or a batch of up to MaxBatchEvents (500) events",
                "oneOf": [
                    _ref("schemas", "Event"),
                    {"type": "array", "items": _ref("schemas", "Event"), "minItems": 1},
                ],
            },
            "Payment": {
                "type": "object",
                "description": (
                    "A payment (reference c.19): `uid`, `vid`, `sid`, `orid`, `invid`, `product`, "
                    "`pcat`, `man`, `model`, `qty`, `price`, `revenue`, `currency`, `amt`, ... "
                    'or `"payments": [...]` for several.'
                ),
                "properties": {
                    "uid": UUID,
                    "vid": UUID,
                    "orid": UUID,
                    "revenue": {"type": "number"},
                    "currency": {"type": "string"},
                    "payments": {"type": "array", "items": {"type": "object"}},
                },
                "additionalProperties": True,
            },
            "Consent": {
                "type": "object",
                "description": "A consent decision (reference c.18): `cflags` and its context.",
                "properties": {
                    "vid": UUID,
                    "cflags": {"type": "integer", "description": "granted categories (bits)"},
                },
                "additionalProperties": True,
            },
            "GeoIP": {
                "type": "object",
                "description": "the original's shape (`country` is the country's name)",
                "properties": {
                    "ips": {"type": "string"},
                    "ipe": {"type": "string"},
                    "iso2": {"type": "string"},
                    "country": {"type": "string"},
                    "region": {"type": "string"},
                    "city": {"type": "string"},
                    "lat": {"type": "number"},
                    "lon": {"type": "number"},
                    "zip": {"type": "string"},
                    "tz": {"type": "string"},
                },
                "required": ["iso2", "country", "region", "city", "lat", "lon", "zip", "tz"],
            },
            "GeoIPRecord": {
                "type": "object",
                "description": "`?format=object` (`country` is the ISO code)",
                "properties": {
                    "ip": {"type": "string"},
                    "country": {"type": "string"},
                    "region": {"type": "string"},
                    "city": {"type": "string"},
                    "lat": {"type": "number"},
                    "lon": {"type": "number"},
                    "zip": {"type": "string"},
                    "tz": {"type": "string"},
                },
                "required": ["ip", "country", "region", "city", "lat", "lon", "zip", "tz"],
            },
            "Health": {
                "type": "object",
                "required": ["status", "store", "spool"],
                "properties": {
                    "status": {"enum": ["ok", "degraded", "down"]},
                    "store": {"type": "object"},
                    "spool": {"type": ["object", "null"]},
                },
            },
            "Link": {
                "type": "object",
                "required": ["id", "urlfrom", "urlto", "status", "forward_query"],
                "properties": {
                    "id": UUID,
                    "urlfrom": {"type": "string", "description": "host/path"},
                    "urlto": {"type": "string"},
                    "location": {"type": "string", "description": "when not urlto"},
                    "status": {"enum": [301, 302, 307, 308]},
                    "expires": {"type": ["string", "null"], "format": "date-time"},
                    "forward_query": {"type": "boolean"},
                    "org": {"type": ["string", "null"]},
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"},
                    "clicks": {"type": "integer", "minimum": 0},
                },
            },
            "LinkInput": {
                "type": "object",
                "required": ["urlfrom", "urlto"],
                "examples": [{"urlfrom": "links.test/spring", "urlto": "https://example.com/sale"}],
                "properties": {
                    "urlfrom": {"type": "string", "examples": ["go.example.com/spring"]},
                    "urlto": {"type": "string", "examples": ["https://example.com/sale"]},
                    "oid": UUID,
                    "org": {"type": "string"},
                    "status": {"enum": [301, 302, 307, 308]},
                    "expires": {"description": "RFC 3339 time or epoch (s or ms); null: never"},
                    "forward_query": {"type": "boolean"},
                },
            },
        },
        "responses": {
            "BadRequest": _json(error, "bad input (the reason in `error`)"),
            "Unauthorized": {
                **_json(error, "credentials missing or wrong"),
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
            },
            "Forbidden": _json(error, "another organisation's link"),
            "NotFound": _json(error, "not found"),
            "MethodNotAllowed": _json(error, "this route does not take this method"),
            "TooManyRequests": {
                **_json(error, "RateLimitPerDay reached, or too many failed logins"),
                "headers": {"Retry-After": retry_after},
            },
            "Unavailable": {
                **_json(error, "cannot accept now (store, spool, MaxConnections); retry later"),
                "headers": {"Retry-After": retry_after},
            },
        },
        "securitySchemes": {
            "dashboardSession": {
                "type": "apiKey",
                "in": "cookie",
                "name": "sfpl_dashboard",
                "description": "the dashboard's session (POST /dashboard/api/login)",
            },
            "bearer": {"type": "http", "scheme": "bearer", "description": "`{uid}.{secret}`"},
            "basic": {"type": "http", "scheme": "basic", "description": "`uid:secret`"},
        },
    }


def _fields_query(description: str) -> dict:
    """Every query key is an event field (or a `params` key): one free-form object. Any value
    is taken (a wrongly typed one is coerced or dropped for its field alone, API.md 4)."""
    return {
        "name": "fields",
        "in": "query",
        "description": description,
        "style": "form",
        "explode": True,
        "schema": {"type": "object", "additionalProperties": True},
    }


def _pairs(description: str) -> dict:
    return {
        "name": "pairs",
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


# ---------------------------------------------------------------------------- operations


def _tracking(p: str) -> dict:
    query = _fields_query("event fields (`utm_` prefixes dropped unless `igqp` is given)")
    pairs = _pairs("REST pairs `key/value/key/value...` (the query wins over a pair)")
    empty = {"description": "accepted (durably); `vid`/`sid` cookies when cookies are allowed"}
    rejected = {"X-Rejected-Events": {"schema": {"type": "integer"}}}
    ids = {
        "description": "accepted: the event id, or the ids of a batch",
        "headers": rejected,
        "content": {JSON: {"schema": {"oneOf": [UUID, {"type": "array", "items": UUID}]}}},
    }
    gif = {
        "description": "accepted: a transparent 1x1 GIF",
        "content": {"image/gif": {"schema": {"type": "string", "contentMediaType": "image/gif"}}},
    }
    body = {"required": True, "content": {JSON: {"schema": _ref("schemas", "Events")}}}
    paths: dict[str, Any] = {}
    for route, tag, ok, summary in (
        ("tr", "tracking", {**empty, "headers": rejected}, "client event"),
        ("str", "tracking", ids, "server event (no cookies)"),
        ("img", "tracking", gif, "pixel"),
    ):
        for suffix, params, form in (("/", [], ""), ("/{pairs}", [pairs], "_pairs")):
            get = {
                "tags": [tag],
                "summary": f"{summary}: fields from the query string and REST path pairs",
                "operationId": f"{route}{form}_get",
                "parameters": [*params, query],
                "responses": _answers(*INGEST, _200=ok),
            }
            post = {
                "tags": [tag],
                "summary": f"{summary}s as JSON (one object or an array) and REST path pairs",
                "operationId": f"{route}{form}_post",
                "parameters": params,
                "requestBody": body,
                "responses": _answers(*INGEST, _200=ok),
            }
            paths[f"{p}/{route}{suffix}"] = {"get": get, "post": post, "put": _alias(post, "put")}
    paths[f"{p}/ltv/"] = {
        "get": {
            "tags": ["payments"],
            "summary": "one payment from the query string (at least one payment field)",
            "operationId": "ltv_get",
            "parameters": [_fields_query("payment fields")],
            "responses": _answers(*INGEST, _200=_ltv_ok()),
        },
        "post": {
            "tags": ["payments"],
            "summary": 'a payment, or "payments": [...]',
            "operationId": "ltv_post",
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": _ref("schemas", "Payment")}},
            },
            "responses": _answers(*INGEST, _200=_ltv_ok()),
        },
    }
    paths[f"{p}/ltv/"]["put"] = _alias(paths[f"{p}/ltv/"]["post"], "put")
    paths[f"{p}/ws"] = {
        "get": {
            "tags": ["tracking"],
            "summary": "WebSocket ingestion (text: a JSON event; binary: LZ4 block)",
            "description": (
                '`?ack=1`: `{"ok": [eids]}` / `{"error": ...}` replies after durable '
                "acceptance. Without an upgrade the answer is 426."
            ),
            "operationId": "ws",
            "responses": _answers(
                *INGEST,
                _101={"description": "switching to WebSocket"},
                _403=_json(_ref("schemas", "Error"), "Origin not allowed"),
                _426={
                    **_json(_ref("schemas", "Error"), "not a WebSocket upgrade"),
                    "headers": {"Upgrade": {"schema": {"type": "string"}}},
                },
            ),
        }
    }
    return paths


def _alias(operation: dict, method: str) -> dict:
    """The same operation under another method (PUT as POST, as the original took it)."""
    return {
        **operation,
        "summary": f"the same as {operation['operationId'].rpartition('_')[2].upper()}",
        "operationId": f"{operation['operationId'].rpartition('_')[0]}_{method}",
    }


def _ltv_ok() -> dict:
    return _json(
        {
            "type": "object",
            "required": ["ok", "ids"],
            "properties": {"ok": {"const": True}, "ids": {"type": "array", "items": UUID}},
        },
        "accepted: the payment row ids",
    )


def _redirects(p: str) -> dict:
    paths = {}
    for route, side in (("rdr", "a server event"), ("xrdr", "a client event (sets cookies)")):
        get = {
            "tags": ["redirects"],
            "summary": f"tracked redirect, recorded as {side}",
            "description": (
                "302 to `url` when its host is in `Domains` or matches "
                "`RedirectAllowHosts`; no `url`: 302 to `DefaultRedirect`."
            ),
            "operationId": f"{route}_get",
            "parameters": [
                {
                    "name": "url",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "destination",
                },
                _fields_query("event fields recorded with the click"),
            ],
            "responses": _answers(
                *INGEST,
                _302={
                    "description": "to the destination",
                    "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
                },
            ),
        }
        paths[f"{p}/{route}/"] = {"get": get, "post": _alias(get, "post")}
    return paths


def _pub(p: str) -> dict:
    return {
        f"{p}/pub/{{file}}": {
            "get": {
                "tags": ["static"],
                "summary": "a file of StaticDirectory, recorded as a server event",
                "operationId": "pub",
                "parameters": [
                    {
                        "name": "file",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                        "examples": {"client": {"value": "track.js"}},
                        "description": "path inside StaticDirectory",
                    }
                ],
                "responses": _answers(
                    *EDGE,
                    404,
                    _200={"description": "the file", "content": {"*/*": {}}},
                    _206={"description": "a range of the file", "content": {"*/*": {}}},
                    _304={"description": "not modified"},
                    _416={"description": "range not satisfiable"},
                ),
            }
        }
    }


def _privacy(p: str) -> dict:
    fmt = {
        "name": "format",
        "in": "query",
        "schema": {"enum": ["object"]},
        "description": "`object`: this gateway's record; absent: the original's shape",
    }
    paths = {
        f"{p}/ppi/agree": {
            "post": {
                "tags": ["privacy"],
                "summary": "record a consent decision",
                "operationId": "agree_post",
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": _ref("schemas", "Consent")}},
                },
                "responses": _answers(
                    *INGEST,
                    _200=_json(
                        {
                            "type": "object",
                            "required": ["ok", "vid"],
                            "properties": {"ok": {"const": True}, "vid": UUID},
                        },
                        "recorded; CookieConsent (and vid) cookies unless GPC/DNT",
                    ),
                ),
            },
            "get": {
                "tags": ["privacy"],
                "summary": "a visitor's consent records, newest first",
                "operationId": "agree_get",
                "parameters": [{"name": "vid", "in": "query", "required": True, "schema": UUID}],
                "responses": _answers(
                    *EDGE,
                    _200=_json({"type": "array", "items": {"type": "object"}}, "the records"),
                ),
            },
        },
        f"{p}/ppi/jds": {
            "get": {
                "tags": ["privacy"],
                "summary": "jurisdictions with their consent rules and retention",
                "operationId": "jds",
                "responses": _answers(
                    *EDGE,
                    _200=_json(
                        {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["regulation", "compliance", "name"],
                            },
                        },
                        "the jurisdictions",
                    ),
                ),
            }
        },
        f"{p}/ppi/geoip": {
            "get": {
                "tags": ["privacy"],
                "summary": "GeoIP record of an address (or of the caller)",
                "operationId": "geoip",
                "parameters": [
                    {
                        "name": "ip",
                        "in": "query",
                        "schema": {"type": "string"},
                        "examples": {"london": {"value": "81.2.69.142"}},
                    },
                    fmt,
                ],
                "responses": _answers(
                    *EDGE,
                    404,
                    _200=_json(
                        {"oneOf": [_ref("schemas", "GeoIP"), _ref("schemas", "GeoIPRecord")]},
                        "the record (never stored)",
                    ),
                ),
            }
        },
    }
    paths[f"{p}/ppi/agree"]["put"] = _alias(paths[f"{p}/ppi/agree"]["post"], "put")
    return paths


def _links(p: str) -> dict:
    auth: list[dict[str, list[str]]] = [{"bearer": []}, {"basic": []}]
    creds = [
        {"name": "uid", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "password", "in": "path", "required": True, "schema": {"type": "string"}},
    ]
    host = {"name": "host", "in": "path", "required": True, "schema": {"type": "string"}}
    urlfrom = {"name": "urlfrom", "in": "query", "required": True, "schema": {"type": "string"}}
    admin = (*EDGE, 401, 403, 429)
    saved = _json(
        {
            "type": "object",
            "required": ["ok", "urlfrom", "created", "link"],
            "properties": {
                "ok": {"const": True},
                "urlfrom": {"type": "string"},
                "created": {"type": "boolean"},
                "link": _ref("schemas", "Link"),
            },
        },
        "saved",
    )
    deleted = _json(
        {
            "type": "object",
            "required": ["ok", "urlfrom", "deleted"],
            "properties": {
                "ok": {"const": True},
                "urlfrom": {"type": "string"},
                "deleted": {"const": True},
            },
        },
        "removed (kept in redirect_history)",
    )
    listed = _json(
        {
            "type": "object",
            "required": ["results"],
            "properties": {"results": {"type": "array", "items": _ref("schemas", "Link")}},
        },
        "the caller's organisation's links on this host",
    )
    body = {"required": True, "content": {JSON: {"schema": _ref("schemas", "LinkInput")}}}

    def save(op_id, params=(), security=None):
        op = {
            "tags": ["short links"],
            "summary": "create or update a short link",
            "operationId": op_id,
            "parameters": list(params),
            "requestBody": body,
            "responses": _answers(*admin, _200=saved),
        }
        if security:
            op["security"] = security
        return op

    def delete(op_id, params=(), security=None):
        op = {
            "tags": ["short links"],
            "summary": "remove a short link",
            "operationId": op_id,
            "parameters": [*params, urlfrom],
            "responses": _answers(*admin, 404, _200=deleted),
        }
        if security:
            op["security"] = security
        return op

    def listing(op_id, params, security=None):
        op = {
            "tags": ["short links"],
            "summary": "list a host's short links with their clicks",
            "operationId": op_id,
            "parameters": list(params),
            "responses": _answers(*admin, _200=listed),
        }
        if security:
            op["security"] = security
        return op

    return {
        f"{p}/rpi/redirect": {
            "post": save("link_save", security=auth),
            "delete": delete("link_delete", security=auth),
        },
        f"{p}/rpi/redirect/{{uid}}/{{password}}": {
            "post": save("link_save_path", creds),
            "delete": delete("link_delete_path", creds),
        },
        f"{p}/rpi/redirects/{{host}}": {"get": listing("links_list", [host], auth)},
        f"{p}/rpi/redirects/{{uid}}/{{password}}/{{host}}": {
            "get": listing("links_list_path", [*creds, host])
        },
    }


def _ops(p: str) -> dict:
    text = {"text/plain": {"schema": {"type": "string"}}}
    status_object = {
        "type": "object",
        "required": ["client", "conns", "uptime_seconds", "version"],
        "properties": {
            "client": {"type": "string"},
            "conns": {"type": "integer"},
            "uptime_seconds": {"type": "number"},
            "version": {"type": "string"},
        },
    }
    status_original = {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["Key", "Value"],
            "properties": {"Key": {"type": "string"}, "Value": {}},
        },
    }
    health = _ref("schemas", "Health")
    return {
        "/ping": {
            "get": {
                "tags": ["ops"],
                "summary": "liveness",
                "operationId": "ping",
                "responses": _answers(
                    *EDGE, _200={"description": "pong", "content": {"text/plain": {}}}
                ),
            }
        },
        "/health": {
            "get": {
                "tags": ["ops"],
                "summary": "whether events are being accepted (never tracked)",
                "operationId": "health",
                "responses": _answers(
                    400,
                    _200=_json(health, "accepting (ok or degraded)"),
                    _503=_json(health, "not accepting (down), or over MaxConnections"),
                ),
            }
        },
        "/status": {
            "get": {
                "tags": ["ops"],
                "summary": "caller IP, open connections (uptime, version with ?format=object)",
                "operationId": "status",
                "parameters": [
                    {
                        "name": "format",
                        "in": "query",
                        "schema": {"enum": ["object"]},
                        "description": "`object`: an object; absent: the original's array",
                    }
                ],
                "responses": _answers(
                    *EDGE,
                    _200=_json({"oneOf": [status_original, status_object]}, "the status"),
                ),
            }
        },
        "/metrics": {
            "get": {
                "tags": ["ops"],
                "summary": "counters: Prometheus text when asked for, else the original's JSON",
                "operationId": "metrics",
                "responses": _answers(
                    *EDGE,
                    _200={
                        "description": "the metrics",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["metrics", "batching", "calculated"],
                                    "properties": {
                                        "metrics": {"type": "object"},
                                        "batching": {"type": "object"},
                                        "calculated": {"type": "object"},
                                    },
                                }
                            },
                            **text,
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    },
                ),
            }
        },
        "/clear": {
            "get": {
                "tags": ["ops"],
                "summary": 'Clear-Site-Data: "cookies", "storage"',
                "operationId": "clear",
                "responses": _answers(*EDGE, _200={"description": "OK", "content": text}),
            }
        },
        f"{p}/openapi.json": {
            "get": {
                "tags": ["ops"],
                "summary": "this document",
                "operationId": "openapi",
                "responses": _answers(
                    *EDGE, _200=_json({"type": "object"}, "OpenAPI 3.1 description")
                ),
            }
        },
    }


# ---------------------------------------------------------------------------- the dashboard

# The dashboard's API is served on the query listener (QueryPort), not on the tracking
# listener: each of its paths names that server.
DASHBOARD_SERVER = [
    {
        "url": "http://{QueryPort}",
        "description": "the query listener (`QueryPort`, loopback by default; docs/dashboard.md)",
        "variables": {"QueryPort": {"default": "127.0.0.1:8123"}},
    }
]
COUNT = {"type": "integer", "minimum": 0}
TEXT = {"type": "string"}


def _rows(**fields: dict) -> dict:
    """An array of rows, each with exactly these fields."""
    return {
        "type": "array",
        "items": {
            "type": "object",
            "required": list(fields),
            "properties": fields,
            "additionalProperties": False,
        },
    }


def _figure_answer(optional: tuple[str, ...] = (), **fields: dict) -> dict:
    """A figure's answer: the filters applied and its own fields (all there but ``optional``)."""
    return {
        "type": "object",
        "required": ["filters", *(name for name in fields if name not in optional)],
        "properties": {"filters": _ref("schemas", "DashboardFilters"), **fields},
        "additionalProperties": False,
    }


def _dashboard_schemas() -> dict:
    totals = {
        "type": "object",
        "required": ["visitors", "sessions", "pageviews", "events"],
        "properties": {k: COUNT for k in ("visitors", "sessions", "pageviews", "events")},
        "additionalProperties": False,
    }
    engagement = {
        "type": "object",
        "required": ["sessions", "bounce_rate", "visit_duration"],
        "properties": {
            "sessions": COUNT,
            "bounce_rate": {"type": "number", "minimum": 0, "maximum": 100},
            "visit_duration": {**COUNT, "description": "mean seconds, first to last event"},
        },
        "additionalProperties": False,
    }
    day_or_hour = {"type": "string", "description": "`YYYY-MM-DD` or `YYYY-MM-DD HH:00:00`"}
    day = {"type": "string", "format": "date"}
    name_counts = _rows(name=TEXT, visitors=COUNT, events=COUNT)
    applied = {
        "type": "object",
        "description": "the filters the answer was computed with (empty ones left out)",
        "required": ["from", "to"],
        "properties": {
            "from": day,
            "to": day,
            **{k: TEXT for k in ("host", "source", "medium", "campaign", "country", "device")},
        },
        "additionalProperties": False,
    }
    figures = {
        "overview": _figure_answer(
            current=totals,
            previous=totals,
            bucket={"enum": ["hour", "day"]},
            series=_rows(t=day_or_hour, visitors=COUNT, pageviews=COUNT),
            realtime={
                "type": "object",
                "required": ["visitors", "minutes"],
                "properties": {"visitors": COUNT, "minutes": {"const": 5}},
                "additionalProperties": False,
            },
        ),
        "engagement": _figure_answer(current=engagement, previous=engagement),
        "pages": _figure_answer(pages=_rows(url=TEXT, pageviews=COUNT)),
        "entry-exit": _figure_answer(
            entry=_rows(url=TEXT, sessions=COUNT), exit=_rows(url=TEXT, sessions=COUNT)
        ),
        "referrers": _figure_answer(referrers=_rows(referrer=TEXT, events=COUNT)),
        "campaigns": _figure_answer(
            campaigns=_rows(source=TEXT, medium=TEXT, campaign=TEXT, visitors=COUNT, events=COUNT)
        ),
        "countries": _figure_answer(countries=_rows(country=TEXT, visitors=COUNT, events=COUNT)),
        "devices": _figure_answer(device=name_counts, browser=name_counts, os=name_counts),
        "goals": _figure_answer(
            ("window_seconds",),
            enames=_rows(ename=TEXT, events=COUNT, visitors=COUNT),
            outcomes=_rows(outcome=TEXT, events=COUNT),
            funnel=_rows(step=TEXT, visitors=COUNT),
            window_seconds={**COUNT, "description": "with `steps` only"},
        ),
        "links": _figure_answer(
            links=_rows(id=UUID, urlfrom=TEXT, urlto=TEXT, clicks=COUNT),
            clicks=_rows(t=day, clicks=COUNT),
        ),
        "revenue": _figure_answer(
            totals={
                "type": "object",
                "required": ["revenue", "payments", "customers"],
                "properties": {
                    "revenue": {"type": "number"},
                    "payments": COUNT,
                    "customers": COUNT,
                },  # fmt: skip
                "additionalProperties": False,
            },
            series=_rows(
                t=day,
                revenue={"type": "number"},
                payments=COUNT,
                lifetime_revenue={"type": "number"},
            ),  # fmt: skip
            top_customers=_rows(uid=UUID, ltv={"type": "number"}, payments=COUNT),
        ),
        "consent": _figure_answer(
            decisions=_rows(
                cflags={"type": "integer"},
                jurisdiction={"type": "string", "description": "a regulation, or `none`"},
                decisions=COUNT,
                visitors=COUNT,
            )
        ),
    }
    return {
        "DashboardFilters": applied,
        **{f"Dashboard.{name}": schema for name, schema in figures.items()},
    }


# figure -> what it answers (docs/dashboard.md, "The API")
FIGURES = {
    "overview": "visitors, sessions, page views, events of the range and the one before; a "
    "series per day (per hour for 1-2 days); realtime visitors (last 5 minutes)",
    "engagement": "bounce rate and mean visit duration, both periods",
    "pages": "top pages by page views",
    "entry-exit": "first and last page of each session",
    "referrers": "referring domains: events per domain of `last`, without the event's own host "
    "(internal navigation; case and a leading `www.` ignored)",
    "campaigns": "UTM source/medium/campaign: visitors, events",
    "countries": "visitors and events per country",
    "devices": "visitors and events per device, browser and OS",
    "goals": "events and visitors per `ename`, outcomes, a funnel over `steps`",
    "links": "short links by clicks in the range, clicks per day",
    "revenue": "revenue, payments, customers; per day and lifetime; top customers by LTV",
    "consent": "decisions of the range by `cflags` and jurisdiction",
}


def _dashboard(p: str) -> dict:
    """``/dashboard/api/`` (docs/dashboard.md): sign-in and the figures, behind a session
    cookie. Not under ``ApiVersion``: the page and its API are versioned together."""
    session: list[dict[str, list[str]]] = [{"dashboardSession": []}]
    error = _ref("schemas", "Error")
    unauthorized = _json(error, "no session (sign in first)")

    def query(name: str, description: str, schema: dict | None = None) -> dict:
        return {
            "name": name,
            "in": "query",
            "description": description,
            "schema": schema or {"type": "string", "maxLength": 256},
        }

    filters = [
        query("from", "first day, included (default: 29 days before `to`)", {"type": "string", "format": "date"}),
        query("to", "last day, included (default: today, UTC)", {"type": "string", "format": "date"}),
        query("host", "the host the events were sent to"),
        *(query(k, f"segment: only events with this `{k}`") for k in ("source", "medium", "campaign", "country", "device")),
        query("limit", "rows per table", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}),
    ]  # fmt: skip
    goals = [
        query("steps", "funnel steps: up to 8 comma-separated `ename`s"),
        query(
            "window",
            "funnel window in seconds (default 7 days)",
            {"type": "integer", "minimum": 1, "maximum": 90 * 86400},
        ),
    ]
    paths: dict[str, Any] = {
        "/dashboard/api/login": {
            "post": {
                "tags": ["dashboard"],
                "summary": "sign in with a short-link admin account; sets the session cookie",
                "operationId": "dashboard_login",
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": {
                                "oneOf": [
                                    {
                                        "type": "object",
                                        "required": ["uid", "secret"],
                                        "properties": {"uid": TEXT, "secret": TEXT},
                                    },
                                    {
                                        "type": "object",
                                        "required": ["token"],
                                        "properties": {
                                            "token": {
                                                "type": "string",
                                                "description": "`{uid}.{secret}`",
                                            }
                                        },
                                    },
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        **_json(
                            {
                                "type": "object",
                                "required": ["uid", "org", "csrf"],
                                "properties": {"uid": TEXT, "org": TEXT, "csrf": TEXT},
                                "additionalProperties": False,
                            },
                            "signed in: send `csrf` back in `X-CSRF-Token` with every POST",
                        ),
                        "headers": {
                            "Set-Cookie": {
                                "schema": {"type": "string"},
                                "description": "`sfpl_dashboard` (HttpOnly, SameSite=Strict, Path=/dashboard)",
                            }
                        },
                    },
                    "400": _ref("responses", "BadRequest"),
                    "401": _json(error, "uid and secret missing or wrong"),
                    "403": _json(error, "cross-origin sign-in (`Origin` of another host)"),
                    "415": _json(error, "not `application/json`"),
                    "429": _ref("responses", "TooManyRequests"),
                    "503": _ref("responses", "Unavailable"),
                },
            }
        },
        "/dashboard/api/session": {
            "get": {
                "tags": ["dashboard"],
                "summary": "whether the caller is signed in (200 either way)",
                "operationId": "dashboard_session",
                "responses": {
                    "200": _json(
                        {
                            "oneOf": [
                                {
                                    "type": "object",
                                    "required": ["signed_in"],
                                    "properties": {"signed_in": {"const": False}},
                                    "additionalProperties": False,
                                },
                                {
                                    "type": "object",
                                    "required": ["signed_in", "uid", "org", "csrf"],
                                    "properties": {
                                        "signed_in": {"const": True},
                                        "uid": TEXT,
                                        "org": TEXT,
                                        "csrf": TEXT,
                                    },
                                    "additionalProperties": False,
                                },
                            ]
                        },
                        "the session",
                    )
                },
            }
        },
        "/dashboard/api/logout": {
            "post": {
                "tags": ["dashboard"],
                "summary": "sign out (ends the session, clears the cookie)",
                "operationId": "dashboard_logout",
                "security": session,
                "parameters": [
                    {
                        "name": "X-CSRF-Token",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "the session's `csrf`",
                    }
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["signed_out"],
                            "properties": {"signed_out": {"const": True}},
                            "additionalProperties": False,
                        },
                        "signed out",
                    ),
                    "401": unauthorized,
                    "403": _json(error, "missing or wrong CSRF token"),
                },
            }
        },
    }
    for figure, summary in FIGURES.items():
        paths[f"/dashboard/api/{figure}"] = {
            "get": {
                "tags": ["dashboard"],
                "summary": summary,
                "operationId": f"dashboard_{figure.replace('-', '_')}",
                "security": session,
                "parameters": filters + (goals if figure == "goals" else []),
                "responses": {
                    "200": _json(_ref("schemas", f"Dashboard.{figure}"), "the figure"),
                    "400": _ref("responses", "BadRequest"),
                    "401": unauthorized,
                    "503": _ref("responses", "Unavailable"),
                },
            }
        }
    for item in paths.values():
        item["servers"] = DASHBOARD_SERVER
    return paths


# The sections of the document, in order: each a function of the prefix giving its paths (and
# `servers` per path when they are served on another listener, as the dashboard's are).
SECTIONS = (_tracking, _redirects, _pub, _privacy, _links, _ops, _dashboard)


def document(prefix: str, version: str) -> dict:
    """The OpenAPI 3.1 document for a gateway whose API is under ``prefix`` (``/tr/v1``)."""
    paths: dict[str, Any] = {}
    for section in SECTIONS:
        paths.update(section(prefix))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sfpltracker",
            "version": version,
            "description": (
                "Telemetry gateway: tracking, payments, consent, short links, operations, "
                "the dashboard's API (on the query listener). "
                "Every ingestion route answers 2xx only after durable acceptance, 503 with "
                'Retry-After when it cannot accept, 400 with {"error": ...} for bad input.'
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": _components(),
    }


class OpenApiResource(Resource):
    """``GET /tr/v1/openapi.json``: the document, built once."""

    isLeaf = True

    def __init__(self, gateway):
        super().__init__()
        self.cfg = gateway.cfg
        self.body = json.dumps(document(gateway.cfg.prefix, gateway.version)).encode()

    def render_GET(self, request):
        apply_cors(request, self.cfg.AllowOrigin)
        request.setHeader(b"content-type", JSON.encode())
        return self.body
