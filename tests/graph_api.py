"""A local stand-in for Meta's Graph API Conversions endpoint, for tests (Meta cannot be reached
from here): a real HTTP server on 127.0.0.1 in a thread.

    with GraphAPI(pixel="1234", token="tok") as graph:
        cfg = {"GraphURL": graph.url, ...}
        graph.script("429", "500", "timeout")   # the next three requests fail so
        graph.reject_ids.add(event_id)          # a request holding it gets Meta's 400
        graph.wait_for(lambda: len(graph.events) >= 10)

It checks every request as Meta documents the contract (developers.facebook.com/docs/
marketing-api/conversions-api: "Using the API", "Parameters", "Customer Information
Parameters"): ``POST /{vNN.N}/{pixel}/events``, the access token (query parameter, or a form
field as in Meta's curl example), a ``data``
array of 1 to 1,000 server events with ``event_name``, ``event_time`` (unix seconds, not older
than 7 days), ``action_source``, ``user_data``; the identifiers that must be hashed (``em``,
``ph``, ``external_id``, ``country``, ...) as 64 lower-case hex digits (SHA-256), those that
must not (``client_ip_address``, ``client_user_agent``, ``fbp``, ``fbc``) in the clear; no
unknown keys. A request that breaks the contract gets Meta's 400 (``OAuthException``, code
100) and is listed in ``violations``; one that passes gets ``{"events_received": n, ...}`` and
its events are appended to ``events``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HASHED = re.compile(r"^[0-9a-f]{64}$")
MUST_HASH = {"em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country"}
MAY_HASH = {"external_id"}  # "hashing recommended": we always hash it, so the test requires it
CLEAR = {
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
    "subscription_id",
    "fb_login_id",
    "lead_id",
}
EVENT_KEYS = {
    "event_name",
    "event_time",
    "event_id",
    "event_source_url",
    "action_source",
    "user_data",
    "custom_data",
    "opt_out",
    "data_processing_options",
    "data_processing_options_country",
    "data_processing_options_state",
    "referrer_url",
}
ACTION_SOURCES = {
    "email",
    "website",
    "app",
    "phone_call",
    "chat",
    "physical_store",
    "system_generated",
    "business_messaging",
    "other",
}


class GraphAPI:
    def __init__(self, pixel: str, token: str, version: str = r"v\d+\.\d+"):
        self.pixel = pixel
        self.token = token
        self.version = version
        self.events: list[dict] = []  # events of accepted requests, in arrival order
        self.requests: list[tuple[str, int]] = []  # (outcome, events in the request)
        self.arrivals: list[float] = []  # time.monotonic() of each request's arrival
        self.violations: list[str] = []
        self.reject_ids: set[str] = set()  # a request with one of these gets Meta's 400
        self.hold_seconds = 3.0  # "timeout": how long the answer is held back
        self.test_codes: set[str] = set()
        self._script: list[str] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def script(self, *outcomes: str) -> None:
        """The next requests fail as listed: "500", "429", "timeout" (no answer in time)."""
        with self._lock:
            self._script.extend(outcomes)

    def fail_always(self, outcome: str = "500") -> None:
        with self._lock:
            self._script = [outcome] * 1_000_000

    def heal(self) -> None:
        with self._lock:
            self._script = []

    def event_ids(self) -> list[str]:
        with self._lock:
            return [e.get("event_id") for e in self.events]

    def outcomes(self) -> list[str]:
        with self._lock:
            return [o for o, _ in self.requests]

    def wait_for(self, predicate, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(
            f"timed out; {len(self.events)} events received, requests {self.requests[-10:]}, "
            f"violations {self.violations[:3]}"
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    # -- the contract --------------------------------------------------------------------------

    def check(self, path: str, query: dict, content_type: str, raw: bytes) -> tuple[list, str]:
        """The request's events, or raise ``ContractError``; also returns the token's source."""
        if not re.fullmatch(rf"/{self.version}/{re.escape(self.pixel)}/events", path):
            raise ContractError(f"path {path!r} is not /vNN.N/{self.pixel}/events")
        if "json" in content_type:
            try:
                body = json.loads(raw)
            except ValueError:
                raise ContractError("body is not JSON") from None
        else:
            form = parse_qs(raw.decode(), keep_blank_values=True)
            body = {k: v[0] for k, v in form.items()}
            if "data" in body:
                body["data"] = json.loads(body["data"])
        if not isinstance(body, dict):
            raise ContractError("body is not an object")
        # Meta: "Attach your generated secure access token using the access_token query
        # parameter" (its curl example sends it as a form field instead).
        token = (query.get("access_token") or [None])[0]
        if token is None and "json" not in content_type:
            token = body.get("access_token")
        if token != self.token:
            raise ContractError("access_token missing or wrong", code=190)
        unknown = set(body) - {"data", "access_token", "test_event_code", "partner_agent"}
        if unknown:
            raise ContractError(f"unknown body keys {sorted(unknown)}")
        if "test_event_code" in body:
            if not isinstance(body["test_event_code"], str):
                raise ContractError("test_event_code is not a string")
            self.test_codes.add(body["test_event_code"])
        data = body.get("data")
        if not isinstance(data, list) or not 1 <= len(data) <= 1000:
            raise ContractError("data must be an array of 1 to 1000 events")
        for n, event in enumerate(data):
            check_event(event, f"data[{n}]")
        return data, token

    def _handler(self):
        graph = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                with graph._lock:
                    graph.arrivals.append(time.monotonic())
                    outcome = graph._script.pop(0) if graph._script else "ok"
                if outcome == "timeout":
                    with graph._lock:
                        graph.requests.append(("timeout", 0))
                    graph._closing.wait(graph.hold_seconds)
                    self._answer(504, {"error": {"message": "held", "code": 2}})
                    return
                if outcome in ("500", "429"):
                    with graph._lock:
                        graph.requests.append((outcome, 0))
                    code = 4 if outcome == "429" else 2
                    msg = "Application request limit reached" if code == 4 else "Service down"
                    self._answer(int(outcome), {"error": {"message": msg, "code": code}})
                    return
                url = urlsplit(self.path)
                try:
                    events, _ = graph.check(
                        url.path,
                        parse_qs(url.query),
                        self.headers.get("content-type", ""),
                        raw,
                    )
                except ContractError as e:
                    with graph._lock:
                        graph.violations.append(str(e))
                        graph.requests.append(("violation", 0))
                    self._answer(400, e.body())
                    return
                bad = [e for e in events if e.get("event_id") in graph.reject_ids]
                if bad:
                    with graph._lock:
                        graph.requests.append(("rejected", len(events)))
                    self._answer(
                        400,
                        ContractError(
                            f"Invalid parameter: event {bad[0]['event_id']} is refused"
                        ).body(),
                    )
                    return
                with graph._lock:
                    graph.events.extend(events)
                    graph.requests.append(("ok", len(events)))
                self._answer(
                    200,
                    {"events_received": len(events), "messages": [], "fbtrace_id": "Atest"},
                )

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (a time-out)

        return Handler


class ContractError(Exception):
    def __init__(self, message: str, code: int = 100):
        super().__init__(message)
        self.code = code

    def body(self) -> dict:
        return {
            "error": {
                "message": f"(#{self.code}) {self}",
                "type": "OAuthException",
                "code": self.code,
                "error_subcode": 2804003,
                "error_user_msg": str(self),
                "fbtrace_id": "Atest",
            }
        }


def check_event(event, where: str) -> None:
    if not isinstance(event, dict):
        raise ContractError(f"{where} is not an object")
    unknown = set(event) - EVENT_KEYS
    if unknown:
        raise ContractError(f"{where}: unknown keys {sorted(unknown)}")
    name = event.get("event_name")
    if not isinstance(name, str) or not name:
        raise ContractError(f"{where}.event_name missing")
    at = event.get("event_time")
    if not isinstance(at, int) or isinstance(at, bool):
        raise ContractError(f"{where}.event_time must be unix seconds (an integer)")
    now = time.time()
    if at < now - 7 * 86400 or at > now + 600:
        raise ContractError(f"{where}.event_time is more than 7 days old or in the future")
    if event.get("action_source") not in ACTION_SOURCES:
        raise ContractError(f"{where}.action_source missing or unknown")
    if "event_id" in event and not isinstance(event["event_id"], str):
        raise ContractError(f"{where}.event_id must be a string")
    if "event_source_url" in event and not isinstance(event["event_source_url"], str):
        raise ContractError(f"{where}.event_source_url must be a string")
    if "opt_out" in event and not isinstance(event["opt_out"], bool):
        raise ContractError(f"{where}.opt_out must be true or false")
    dpo = event.get("data_processing_options")
    if dpo is not None and (not isinstance(dpo, list) or any(v != "LDU" for v in dpo)):
        raise ContractError(f'{where}.data_processing_options must be [] or ["LDU"]')
    user = event.get("user_data")
    if not isinstance(user, dict) or not user:
        raise ContractError(f"{where}.user_data missing or empty")
    for key, value in user.items():
        values = value if isinstance(value, list) else [value]
        if key in MUST_HASH | MAY_HASH:
            if not values or not all(isinstance(v, str) and HASHED.match(v) for v in values):
                raise ContractError(f"{where}.user_data.{key} must be SHA-256 hex (hashed)")
        elif key in CLEAR:
            if not isinstance(value, str) or not value or HASHED.match(value):
                raise ContractError(f"{where}.user_data.{key} must be sent in the clear")
            if key == "client_ip_address":
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    raise ContractError(f"{where}.user_data.client_ip_address: not an IP") from None
        else:
            raise ContractError(f"{where}.user_data: unknown key {key!r}")
    custom = event.get("custom_data")
    if custom is not None:
        if not isinstance(custom, dict):
            raise ContractError(f"{where}.custom_data must be an object")
        if "value" in custom and (
            not isinstance(custom["value"], int | float) or isinstance(custom["value"], bool)
        ):
            raise ContractError(f"{where}.custom_data.value must be a number")
        currency = custom.get("currency")
        if currency is not None and not (
            isinstance(currency, str) and re.fullmatch(r"[A-Za-z]{3}", currency)
        ):
            raise ContractError(f"{where}.custom_data.currency must be an ISO 4217 code")
    if name == "Purchase" and not (
        isinstance(custom, dict) and "value" in custom and "currency" in custom
    ):
        raise ContractError(f"{where}: a Purchase needs custom_data.value and currency")
