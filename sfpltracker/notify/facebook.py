"""The Facebook (Meta) Conversions API output: accepted events sent server-side to the Graph API.

Two halves, so nothing Meta does ever touches a client's request:

* **Capture** (request path, only for an ``ename`` in some entry's ``Events``): the event model's
  rows keep no e-mail, phone, full IP or user agent (privacy), so what Meta needs is taken here,
  already in Meta's form (identifiers normalised and SHA-256 hashed), as one more record
  ``("capi", {...})`` accepted together with the ``events`` row. It is spooled with it (so it is
  as durable as the event) and never inserted into a store.
* **Output** (loader side): the spool's loader hands every ``capi`` record to each
  ``FacebookOutput``, which appends the events its ``Events`` list names to its own *outbox*
  (``DataDirectory/facebook/<PixelId>/outbox-N.jsonl``, fsync-ed) before the loader may move
  its committed position past them. A sender drains the outbox to
  ``{GraphURL}/{GraphVersion}/{PixelId}/events`` in requests of at most ``BatchEvents`` (Meta's
  limit: 1,000) and saves how far it got (``sent.json``) after each answer.

Exactly once across restarts: each outbox line carries the spool position of its frame (and
its series, for a worker's, Workers > 1); a frame the loader replays (after a crash or a failed
store batch) at or before the outbox's last position of that series was already taken and is skipped, so nothing is appended twice, and nothing the
loader committed is missing. The sender resends only what ``sent.json`` does not cover: the one
window left is a crash between Meta's 200 and that save, and Meta drops the resend as a
duplicate (same ``event_id`` and ``event_name``).

Meta's answers: 2xx sent; 429, 5xx, a time-out, a refused connection, a rate-limit or token
error code: retried with exponential backoff behind a circuit breaker (events wait in the
outbox, in order). Any other 4xx is about the data: Meta rejects a whole request for one bad
event, so the batch is halved until the bad events are alone, and those go to
``DataDirectory/facebook/<PixelId>/deadletter/events.jsonl`` with Meta's reason. An event older
than Meta's 7 days is dead-lettered without a request (Meta would refuse the whole batch).

Consent (docs/outputs.md): personal data (hashed e-mail and phone, IP address, user agent,
``fbp``/``fbc``, country) goes only when the event's consent flags carry the marketing bit
(``cflags & 4096``) and the browser sent neither ``Sec-GPC: 1`` nor ``DNT: 1``. Otherwise the
event is sent with the hashed visitor id alone and ``opt_out: true`` (attribution only), and
under GPC/DNT with Meta's Limited Data Use flag too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import treq
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import defer, task
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from sfpltracker.fsutil import fsync_dir, write_atomic
from sfpltracker.ingest.ids import parse_uuid
from sfpltracker.pipeline.breaker import CircuitBreaker
from sfpltracker.pipeline.intake import OUTPUT_TABLE
from sfpltracker.store.deadletter import DeadLetters

log = Logger()

CAPI_TABLE = OUTPUT_TABLE  # spooled with the event, never inserted into a store
MARKETING_FLAG = 4096  # the consent bit that allows marketing (the original's CFlagsMarketing)
GRAPH_URL = "https://graph.facebook.com"
GRAPH_VERSION = "v22.0"
MAX_BATCH_EVENTS = 1000  # Meta: at most 1,000 events per request
MAX_AGE_SECONDS = 7 * 86400  # Meta refuses a request holding an event older than 7 days
SEGMENT_BYTES = 4 * 1024 * 1024
BACKOFF_BASE_SECONDS = 0.25
BACKOFF_MAX_SECONDS = 30.0
# Graph API error codes that are not about the events: rate limits (4, 17, 32, 613, 80000s),
# temporary trouble (1, 2), an expired or invalid token or a missing permission (190, 102, 10,
# 200-299; the operator fixes the token, the events wait).
_TRANSIENT_CODES = frozenset({1, 2, 4, 17, 32, 102, 190, 341, 368, 613, 10})


# ------------------------------------------------------------------------------ capture


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalise_email(value: Any) -> str | None:
    """Meta: trim leading and trailing whitespace, lower-case."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    return text if "@" in text else None


_NOT_DIGIT = re.compile(r"\D+")


def normalise_phone(value: Any) -> str | None:
    """Meta: digits only (no symbols, letters or spaces), no leading zeros, with the country
    code (``+1 (650) 555-1212`` -> ``16505551212``; ``0044 20...`` -> ``4420...``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    digits = _NOT_DIGIT.sub("", value).lstrip("0")
    return digits or None


def normalise_text(value: Any) -> str | None:
    """External ids, country: trimmed and lower-cased (Meta: ISO 3166 alpha-2, lower case)."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    text = str(value).strip().lower()
    return text or None


def marketing_allowed(cflags: Any, headers) -> bool:
    """The visitor's consent flags carry the marketing bit, and the browser does not ask, by
    GPC or DNT, not to be tracked (whatever ``HonorDNT`` says: this is sharing with Meta)."""
    if not isinstance(cflags, int) or isinstance(cflags, bool) or not cflags & MARKETING_FLAG:
        return False
    return not _header_refusal(headers)


def _header_refusal(headers) -> bool:
    return headers.get("sec-gpc", "").strip() == "1" or headers.get("dnt", "").strip() == "1"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value == value and abs(value) < 1e15 else None
    if isinstance(value, str):
        try:
            return _number(float(value.strip()))
        except ValueError:
            return None
    return None


class Capture:
    """Builds the ``capi`` record of an event whose ``ename`` an output sends (request path)."""

    def __init__(self, enames):
        self.enames = frozenset(e.strip().lower() for e in enames)

    def __call__(self, raw: dict, row: dict, req) -> tuple[str, dict] | None:
        ename = row.get("ename")
        if ename not in self.enames or row.get("bot"):
            return None  # not listed, or a crawler's (the user-agent parser says so)
        server = bool(row.get("server"))
        headers = {} if server else req.headers
        ids = [sha256_hex(v) for v in (normalise_text(row.get("vid")),) if v]
        user: dict[str, Any] = {"external_id": ids}
        event: dict[str, Any] = {
            "event_time": int(row["created_at"]) // 1000,
            "event_id": row["eid"],
            "action_source": "website",
        }
        url = row.get("url") or raw.get("uri")
        if isinstance(url, str) and url:
            event["event_source_url"] = url
        if marketing_allowed(row.get("cflags"), headers):
            uid = normalise_text(row.get("uid"))
            if uid:
                ids.append(sha256_hex(uid))
            email = normalise_email(raw.get("email"))
            if email:
                user["em"] = [sha256_hex(email)]
            phone = normalise_phone(raw.get("phone", raw.get("cell")))
            if phone:
                user["ph"] = [sha256_hex(phone)]
            country = normalise_text(row.get("country"))
            if country:
                user["country"] = [sha256_hex(country)]
            # A server event (/str/) comes from the site's backend: the visitor's IP and user
            # agent are the ones it passes on, not the backend's own.
            ip = raw.get("ip") if server else req.ip
            ua = (raw.get("ua") or raw.get("user_agent")) if server else req.user_agent
            if isinstance(ip, str) and ip:
                user["client_ip_address"] = ip
            if isinstance(ua, str) and ua:
                user["client_user_agent"] = ua
            for key in ("fbp", "fbc"):
                value = raw.get(key) or (None if server else req.cookies.get(f"_{key}"))
                if isinstance(value, str) and value:
                    user[key] = value
        else:
            event["opt_out"] = True  # attribution only, never used for ads delivery
            if _header_refusal(headers):
                # Meta's Limited Data Use, located by Meta ("do not sell or share").
                event["data_processing_options"] = ["LDU"]
                event["data_processing_options_country"] = 0
                event["data_processing_options_state"] = 0
        if not ids:  # a payment with a uid but no vid, sent without consent
            del user["external_id"]
        event["user_data"] = user
        custom: dict[str, Any] = {}
        value = _number(raw.get("value", raw.get("revenue", raw.get("amt"))))
        if value is not None:
            custom["value"] = value
        currency = raw.get("currency", raw.get("cur"))
        if isinstance(currency, str) and re.fullmatch(r"[A-Za-z]{3}", currency.strip()):
            custom["currency"] = currency.strip().upper()
        order = raw.get("order_id", row.get("oid"))
        if isinstance(order, str) and order:
            custom["order_id"] = order
        if custom:
            event["custom_data"] = custom
        return (CAPI_TABLE, {"ename": ename, "event": event})

    def payment(self, body: dict, item: dict, row: dict, req) -> tuple[str, dict] | None:
        """The ``capi`` record of one ``/ltv/`` payment row (``item``: its line item, ``body``:
        the request, keys lower-cased). Its event name is the payment's ``ename``, else
        ``purchase`` (Meta's standard event); its ``event_id`` the line item's ``eid``, else the
        payment's id (the store's dedup key, so a replay is the same event at Meta too); the
        amount ``revenue`` (or ``amt``), else ``total``, else ``payment``. A payment without an
        amount (Meta refuses a Purchase without ``value`` and ``currency``) or without a vid or
        uid (nothing to attribute it to) is not sent."""
        ename = item.get("ename", body.get("ename", "purchase"))
        if not isinstance(ename, str) or ename.strip().lower() not in self.enames:
            return None
        value = next((row[k] for k in ("revenue", "total", "payment") if k in row), None)
        if value is None or not (row.get("vid") or row.get("uid")):
            return None  # no amount, or no one to attribute it to
        flags = body.get("cflags", req.cookies.get("CookieConsent"))
        try:
            cflags = int(flags) if flags is not None and not isinstance(flags, bool) else None
        except (TypeError, ValueError):
            cflags = None
        as_event = {  # what the capture reads of an event row
            "ename": ename.strip().lower(),
            "eid": parse_uuid(item.get("eid")) or row["id"],
            "created_at": row["created_at"],
            "vid": row.get("vid"),
            "uid": row.get("uid"),
            "cflags": cflags,
            "country": row.get("country"),
            "url": item.get("url", body.get("url")),
        }
        # The row's amount and currency (defaulted to USD), the order id when given.
        raw = {**body, **item, "value": value, "currency": row["currency"]}
        raw["order_id"] = row.get("orid") or item.get("order_id")
        return self(raw, as_event, req)


def make_capture(cfg) -> Capture | None:
    entries = facebook_entries(cfg)
    if not entries:
        return None
    return Capture(e for entry in entries for e in entry.Events)


def facebook_entries(cfg) -> list:
    return [n for n in cfg.Notify if n.Type == "facebook" and not n.Skip]


# ------------------------------------------------------------------------------ outbox


Pos = tuple[int, int]  # a spool position (segment, offset)


def _segment(directory: Path, seq: int) -> Path:
    return directory / f"outbox-{seq:08d}.jsonl"


@dataclass
class Batch:
    events: list[dict]
    end: tuple[int, int]  # the outbox position after the batch's last line


@dataclass
class Outbox:
    """Append-only segment files of Meta-ready events and the position sent up to.

    Blocking methods: called on a thread, one at a time per method kind (appends serialised by
    the output, reads and ``mark_sent`` by the one sender); ``sizes`` is shared under a lock."""

    directory: Path
    sent: tuple[int, int] = (1, 0)
    durable: tuple[int, int] = (1, 0)  # end of what is fsync-ed: the sender reads no further
    # Per spool series (None: the gateway's own spool, else a worker's series name): the
    # position of the last frame taken. Positions of different series are not comparable.
    high_water: dict[str | None, Pos] = field(default_factory=dict)
    pending: int = 0  # lines not yet sent (changed on the reactor thread only, after open)
    # The marks of the segments deleted once sent (kept in sent.json): a series that took
    # nothing since still finds its mark after a restart.
    deleted_marks: dict[str | None, Pos] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for p in self.directory.glob("outbox-*.jsonl"):
            self.sizes[int(p.stem.split("-")[1])] = p.stat().st_size
        if not self.sizes:
            self.sizes[1] = 0
            _segment(self.directory, 1).touch()
        newest = max(self.sizes)
        # A line cut short by a crash was never confirmed to the loader: it is appended again.
        path = _segment(self.directory, newest)
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            os.truncate(path, keep)
            self.sizes[newest] = keep
        self.durable = (newest, self.sizes[newest])
        try:
            saved = json.loads((self.directory / "sent.json").read_text())
            self.sent = (int(saved["segment"]), int(saved["offset"]))
            for name, seg, off in saved.get("marks", ()):
                self.deleted_marks[name] = (int(seg), int(off))
        except FileNotFoundError:
            self.sent = (min(self.sizes), 0)
        if self.sent[0] not in self.sizes:  # its segment was sent and deleted
            self.sent = (min(s for s in self.sizes if s >= self.sent[0]), 0)
        self.high_water = dict(self.deleted_marks)
        for seq in sorted(self.sizes):  # what is left: the unsent part, a few segments
            self.high_water.update(self._marks(seq))
        for seq in sorted(self.sizes):
            if seq < self.sent[0]:
                continue
            with open(_segment(self.directory, seq), "rb") as f:
                if seq == self.sent[0]:
                    f.seek(self.sent[1])
                self.pending += f.read().count(b"\n")

    def append(self, lines: list[bytes]) -> tuple[int, int]:
        with self.lock:
            seq = max(self.sizes)
            if self.sizes[seq] >= SEGMENT_BYTES:
                seq += 1
                self.sizes[seq] = 0
            size = self.sizes[seq]
        path = _segment(self.directory, seq)
        data = b"".join(lines)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)  # no half-written lines: the retry appends them whole
            raise
        finally:
            os.close(fd)
        if size == 0:
            fsync_dir(self.directory)  # a new segment: its name survives a crash too
        with self.lock:
            self.sizes[seq] = size + len(data)
        return (seq, size + len(data))

    def read(self, limit: int, until: tuple[int, int]) -> Batch:
        """Up to ``limit`` events from the sent position, not past ``until`` (durable)."""
        events: list[dict] = []
        seq, offset = self.sent
        while len(events) < limit and (seq, offset) < until:
            with self.lock:
                size = self.sizes.get(seq, 0) if seq != until[0] else until[1]
                later = [s for s in self.sizes if s > seq]
            if offset >= size:
                if not later:
                    break
                seq, offset = min(later), 0
                continue
            with open(_segment(self.directory, seq), "rb") as f:
                f.seek(offset)
                data = f.read(size - offset)
            for line in data.splitlines(keepends=True):
                if len(events) >= limit:
                    break
                events.append(json.loads(line)["ev"])
                offset += len(line)
        return Batch(events, (seq, offset))

    def _marks(self, seq: int) -> dict[str | None, Pos]:
        """The last spool position of each series in segment ``seq``."""
        marks: dict[str | None, Pos] = {}
        for line in _segment(self.directory, seq).read_bytes().splitlines():
            entry = json.loads(line)
            at = entry.get("at")
            if at is not None:
                marks[entry.get("s")] = (at[0], at[1])
        return marks

    def mark_sent(self, end: tuple[int, int]) -> None:
        with self.lock:
            newest = max(self.sizes)
            done = sorted(s for s in self.sizes if s < end[0] and s != newest)
        for seq in done:  # their marks are saved before the segments go
            self.deleted_marks.update(self._marks(seq))
        marks = [[name, *at] for name, at in self.deleted_marks.items()]
        position = json.dumps({"segment": end[0], "offset": end[1], "marks": marks})
        write_atomic(self.directory / "sent.json", position, 0o600)
        self.sent = end
        with self.lock:
            for seq in done:
                del self.sizes[seq]
        for seq in done:
            _segment(self.directory, seq).unlink(missing_ok=True)


# ------------------------------------------------------------------------------ output


class Rejected(Exception):
    """Meta refused the request for its data (retrying the same events cannot help)."""

    def __init__(self, reason: str, code: int):
        super().__init__(reason)
        self.reason = reason
        self.code = code


class Transient(Exception):
    """Meta could not take the request now (429, 5xx, time-out, network, token, rate limit)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class Stopped(Exception):
    pass


@dataclass
class Stats:
    captured: int = 0  # events appended to the outbox
    replay_skipped: int = 0  # replayed events already in the outbox
    sent: int = 0
    requests: dict[str, int] = field(default_factory=lambda: {"ok": 0, "retry": 0, "rejected": 0})
    batches: int = 0
    dead_letter: int = 0


class FacebookOutput:
    """One ``facebook`` Notify entry: its outbox, its sender, its breaker and dead letters."""

    def __init__(self, entry, cfg, reactor, blocking=deferToThread):
        self.entry = entry
        self.reactor = reactor
        self.pixel = entry.PixelId
        self.names = {e.strip().lower(): e.strip() for e in entry.Events}
        base = (entry.GraphURL or GRAPH_URL).rstrip("/")
        self.url = f"{base}/{entry.GraphVersion}/{entry.PixelId}/events"
        self.batch_events = entry.BatchEvents
        self.timeout = entry.Timeout
        self.directory = cfg.data_dir / "facebook" / _safe(entry.PixelId)
        self.outbox = Outbox(self.directory)
        self.dead = DeadLetters(self.directory / "deadletter")
        self.breaker = CircuitBreaker(reactor, max_failures=5, reset_seconds=5.0)
        self.stats = Stats()
        self._blocking = blocking
        self._append_lock = defer.DeferredLock()
        self._wakeup: defer.Deferred | None = None
        self._sleep: defer.Deferred | None = None
        self._running: defer.Deferred | None = None
        self._stopped = True
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 1

    # -- life cycle -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self):
        yield self._blocking(self.outbox.open)
        self._stopped = False
        if self.outbox.pending:
            log.info(
                "facebook {pixel}: {n} event(s) waiting to be sent",
                pixel=self.pixel,
                n=self.outbox.pending,
            )
        self._running = self._run()
        self._running.addErrback(lambda f: log.failure("facebook sender stopped", f))

    def limit_high_water(self, spool_end, series: str | None = None) -> None:
        """The spool (``series``) ends at ``spool_end``: a mark beyond it is from a spool since
        removed, so no replay can be in the outbox already."""
        end = (spool_end.segment, spool_end.offset)
        high = self.outbox.high_water.get(series)
        if high is not None and high > end:
            del self.outbox.high_water[series]

    @defer.inlineCallbacks
    def stop(self):
        self._stopped = True
        for d in (self._wakeup, self._sleep):
            if d is not None and not d.called:
                d.cancel()
        if self._running is not None:
            yield self._running
        yield self._append_lock.acquire()
        self._append_lock.release()
        yield self.pool.closeCachedConnections()

    # -- from the loader ----------------------------------------------------------------------

    def take(self, items, series: str | None = None) -> defer.Deferred:
        """``items``: ``(at, replay, row)`` of ``capi`` records in spool order (``at``: the
        frame's end position in the spool ``series``, None without a spool). Fires once the
        ones this output sends are in the outbox, durably."""
        lines: list[bytes] = []
        last_at = None
        high = self.outbox.high_water.get(series)
        for at, replay, row in items:
            name = self.names.get(row.get("ename"))
            if name is None:
                continue
            if at is not None:
                at = (at.segment, at.offset)
                if replay and high is not None and at <= high:
                    self.stats.replay_skipped += 1
                    continue
                last_at = at
            event = {"event_name": name, **row["event"]}
            line: dict[str, Any] = {"at": at, "ev": event}
            if series is not None:
                line["s"] = series
            lines.append(
                json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode(
                    "utf-8", "backslashreplace"
                )
                + b"\n"
            )
        if not lines:
            return defer.succeed(None)
        if last_at is not None:
            # Set now: a replay of these frames taken before the append finishes is skipped.
            self.outbox.high_water[series] = last_at
        return self._append_lock.run(self._append, lines)

    @defer.inlineCallbacks
    def _append(self, lines):
        # A write error (disk full) is retried here rather than failing the loader's chunk:
        # the lines stay in order, and the high-water mark set in take() stays true.
        while True:
            try:
                end = yield self._blocking(self.outbox.append, lines)
                break
            except OSError as e:
                log.error(
                    "facebook {pixel}: cannot write the outbox ({why}); retrying",
                    pixel=self.pixel,
                    why=e.strerror or str(e),
                )
                if self._stopped:
                    raise
                yield task.deferLater(self.reactor, 1.0, lambda: None)
        self.outbox.durable = end
        self.outbox.pending += len(lines)
        self.stats.captured += len(lines)
        if self._wakeup is not None and not self._wakeup.called:
            self._wakeup.callback(None)

    # -- sending ------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _run(self):
        while not self._stopped:
            if self.outbox.pending <= 0 or self.outbox.sent >= self.outbox.durable:
                self._wakeup = defer.Deferred()
                try:
                    yield self._wakeup
                except defer.CancelledError:
                    return
                finally:
                    self._wakeup = None
                continue
            batch = yield self._blocking(self.outbox.read, self.batch_events, self.outbox.durable)
            if not batch.events:
                self.outbox.pending = 0  # the count drifted (an empty segment): re-synced
                self._wakeup = defer.Deferred()
                try:
                    yield self._wakeup  # until the next append
                except defer.CancelledError:
                    return
                finally:
                    self._wakeup = None
                continue
            try:
                yield self._deliver(batch.events)
            except Stopped:
                return
            self.stats.batches += 1
            yield self._blocking(self.outbox.mark_sent, batch.end)
            self.outbox.pending -= len(batch.events)

    @defer.inlineCallbacks
    def _deliver(self, events: list[dict]):
        """Send ``events`` until Meta took them or the ones it refuses are dead letters."""
        now = self.reactor.seconds()
        stale = [e for e in events if e.get("event_time", 0) < now - MAX_AGE_SECONDS + 60]
        if stale:
            yield self._dead_letter([(e, "older than Meta's 7 days", 0) for e in stale])
            events = [e for e in events if e.get("event_time", 0) >= now - MAX_AGE_SECONDS + 60]
        attempt = 0
        while events:
            if self._stopped:
                raise Stopped()
            wait = self.breaker.seconds_until_trial()
            if wait > 0:
                yield self._pause(wait)
                continue
            try:
                yield self._post(events)
            except Transient as e:
                self.stats.requests["retry"] += 1
                self.breaker.failure()
                delay = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, BACKOFF_MAX_SECONDS))
                attempt += 1
                log.warn(
                    "facebook {pixel}: {n} event(s) not sent ({why}); retry {attempt} in "
                    "{delay:.1f}s",
                    pixel=self.pixel,
                    n=len(events),
                    why=str(e),
                    attempt=attempt,
                    delay=delay,
                )
                yield self._pause(delay)
                continue
            except Rejected as e:
                self.stats.requests["rejected"] += 1
                self.breaker.success()  # Meta answered: it is up
                if len(events) == 1:
                    yield self._dead_letter([(events[0], e.reason, e.code)])
                    return
                middle = len(events) // 2
                yield self._deliver(events[:middle])
                yield self._deliver(events[middle:])
                return
            self.stats.requests["ok"] += 1
            self.stats.sent += len(events)
            self.breaker.success()
            return

    def _pause(self, seconds: float) -> defer.Deferred:
        self._sleep = task.deferLater(self.reactor, seconds, lambda: None)

        def cancelled(failure):
            failure.trap(defer.CancelledError)
            raise Stopped()

        self._sleep.addErrback(cancelled)
        return self._sleep

    @defer.inlineCallbacks
    def _post(self, events: list[dict]):
        body: dict[str, Any] = {"data": events}
        if self.entry.TestEventCode:
            body["test_event_code"] = self.entry.TestEventCode
        try:
            # Meta's documented form: the token as the access_token query parameter (it is
            # never logged: log lines and dead letters name self.url, without it).
            d = treq.post(
                self.url,
                params={"access_token": self.entry.AccessToken},
                json=body,
                pool=self.pool,
                reactor=self.reactor,
            )
            d.addTimeout(self.timeout, self.reactor)
            response = yield d
            r = treq.content(response)
            r.addTimeout(self.timeout, self.reactor)
            content = yield r
        except defer.TimeoutError:
            raise Transient(f"no answer within {self.timeout:g}s") from None
        except Exception as e:  # noqa: BLE001 - refused connection, reset, DNS: all transient
            raise Transient(f"{type(e).__name__}: {e}") from None
        status = response.code
        if 200 <= status < 300:
            return
        error: dict = {}
        try:
            error = json.loads(content).get("error") or {}
        except (ValueError, AttributeError):
            pass
        raw_code = error.get("code")
        code: int = raw_code if isinstance(raw_code, int) else 0
        reason = str(error.get("error_user_msg") or error.get("message") or content[:200])
        transient_code = code in _TRANSIENT_CODES or 200 <= code < 300 or 80000 <= code < 80100
        if status == 429 or status == 408 or status >= 500 or transient_code:
            retry = response.headers.getRawHeaders(b"retry-after", [None])[0]
            seconds = _number(retry.decode("latin-1")) if retry else None
            raise Transient(f"HTTP {status}: {reason}", seconds)
        raise Rejected(f"HTTP {status}: {reason}", code)

    @defer.inlineCallbacks
    def _dead_letter(self, entries):
        yield self._blocking(self.dead.append, "events", entries, self.url.split("?")[0])
        self.stats.dead_letter += len(entries)
        log.warn(
            "facebook {pixel}: {n} event(s) refused by Meta, kept in {path}: {why}",
            pixel=self.pixel,
            n=len(entries),
            path=str(self.dead.path("events")),
            why=entries[0][1],
        )

    # -- numbers ------------------------------------------------------------------------------

    def metric_families(self):
        labels = [self.pixel]

        def family(cls, name, doc, value):
            metric = cls(name, doc, labels=["pixel"])
            metric.add_metric(labels, value)
            return metric

        st = self.stats
        yield family(
            CounterMetricFamily,
            "sfpl_facebook_events_sent",
            "Events Meta accepted",
            st.sent,
        )
        yield family(
            GaugeMetricFamily,
            "sfpl_facebook_events_pending",
            "Events in the outbox not yet sent",
            max(0, self.outbox.pending),
        )
        yield family(
            CounterMetricFamily,
            "sfpl_facebook_events_captured",
            "Events appended to the outbox",
            st.captured,
        )
        yield family(
            CounterMetricFamily,
            "sfpl_facebook_events_dead_letter",
            "Events Meta refused (or too old), kept in the dead-letter file",
            st.dead_letter,
        )
        yield family(
            CounterMetricFamily,
            "sfpl_facebook_batches",
            "Batches finished (sent, or their refused events dead-lettered)",
            st.batches,
        )
        requests = CounterMetricFamily(
            "sfpl_facebook_requests",
            "Graph API requests by outcome (ok, retry: 429/5xx/time-out/network, rejected: 4xx)",
            labels=["pixel", "outcome"],
        )
        for outcome, n in st.requests.items():
            requests.add_metric([self.pixel, outcome], n)
        yield requests
        yield family(
            GaugeMetricFamily,
            "sfpl_facebook_circuit_open",
            "1 while the circuit breaker holds requests back",
            0 if self.breaker.allows() else 1,
        )

    def counters(self) -> dict[str, int]:
        """The counters, for the supervisor's totals (Workers > 1: a worker's /metrics shows
        the store process's output through them, ``total_families``)."""
        st = self.stats
        out = {"sent": st.sent, "captured": st.captured, "dead_letter": st.dead_letter}
        out["batches"] = st.batches
        out.update({f"requests_{k}": n for k, n in st.requests.items()})
        return {f"facebook_{k}:{self.pixel}": n for k, n in out.items()}


_TOTALS = {
    "sent": ("sfpl_facebook_events_sent", "Events Meta accepted"),
    "captured": ("sfpl_facebook_events_captured", "Events appended to the outbox"),
    "dead_letter": ("sfpl_facebook_events_dead_letter", "Events Meta refused (or too old)"),
    "batches": ("sfpl_facebook_batches", "Batches finished"),
}


def total_families(totals: dict[str, int]):
    """A worker's view of the outputs (they run in the store process): their counters from the
    supervisor's totals. The gauges (pending, circuit open) are the store process's own."""
    by_pixel: dict[str, dict[str, int]] = {}
    for key, n in totals.items():
        if key.startswith("facebook_") and ":" in key:
            what, pixel = key[len("facebook_") :].split(":", 1)
            by_pixel.setdefault(pixel, {})[what] = n
    for pixel, c in by_pixel.items():
        for what, (name, doc) in _TOTALS.items():
            metric = CounterMetricFamily(name, doc, labels=["pixel"])
            metric.add_metric([pixel], c.get(what, 0))
            yield metric
        requests = CounterMetricFamily(
            "sfpl_facebook_requests", "Graph API requests by outcome", labels=["pixel", "outcome"]
        )
        for what, n in c.items():
            if what.startswith("requests_"):
                requests.add_metric([pixel, what[len("requests_") :]], n)
        yield requests


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "pixel"


# ------------------------------------------------------------------------------ wiring


def make_outputs(cfg, reactor) -> list[FacebookOutput]:
    """The outputs of ``cfg`` (none: nothing captured); the composition root (gateway.py)
    hands them to the loader and captures what they need at ingestion."""
    return [FacebookOutput(entry, cfg, reactor) for entry in facebook_entries(cfg)]
