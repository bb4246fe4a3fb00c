"""The original tracker's NATS consumer: ``tic.log``, ``tic.count``, ``tic.update`` messages
become rows of ``logs``, ``counters`` and ``updates`` (reference c.20, h "NATS").

A ``nats`` Notify entry with ``"Consume": true`` queue-subscribes (group ``tracker``, so
gateways share the work) to ``tic.<kind>`` and ``tic.<kind>.>``, or to the entry's
``ConsumeSubjects`` (the original's ``Consume[].Filter``: Alias -> Id). Each JSON message is checked
and turned into one row with the original's columns, then handed to the gateway's intake (the
spool: durable and loaded like every other row; the composition root passes the intake in).
A message that is not a JSON object, or has a field of the wrong type, is logged and counted
(``sfpl_nats_consume_rejected``), never stored; a row the store then refuses for its data goes
to the store's dead-letter file like any other row.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from twisted.logger import Logger

from sfpltracker.privacy.ip import IPPolicy
from sfpltracker.store.interface import Intake

log = Logger()

QUEUE_GROUP = "tracker"  # the original's queue group: one gateway of the group gets a message
KINDS = ("log", "count", "update")


class BadMessage(ValueError):
    """A message that cannot become a row; the text says why."""


@dataclass
class ConsumeStats:
    received: int = 0
    accepted: int = 0
    rejected: int = 0  # malformed: not stored
    failed: int = 0  # the intake did not take the row


def _text(v: dict, key: str, default: str = "") -> str:
    value = v.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadMessage(f"{key} must be a string")
    return str(value)


def _uuid(v: dict, key: str) -> str | None:
    value = v.get(key)
    if value in (None, ""):
        return None
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise BadMessage(f"{key} must be a UUID") from None


def _int(v: dict, key: str) -> int | None:
    value = v.get(key)
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        raise BadMessage(f"{key} must be a number")
    try:
        return int(value)  # the original sent ms / ns as strings
    except (TypeError, ValueError):
        raise BadMessage(f"{key} must be a number") from None


def _today(now_ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now_ms / 1000))


def count_row(v: dict, subject: str, now_ms: int) -> dict:
    return {"id": _text(v, "id") or subject, "total": 1, "date": _today(now_ms)}


def update_row(v: dict, subject: str, now_ms: int) -> dict:
    updated = _int(v, "updated")
    return {
        "id": _text(v, "id") or subject,
        "updated_at": updated if updated is not None else now_ms,
        "msg": _text(v, "msg"),
    }


def log_row(v: dict, subject: str, now_ms: int) -> dict:
    ldate = _text(v, "ldate") or _today(now_ms)
    try:
        time.strptime(ldate[:10], "%Y-%m-%d")
    except ValueError:
        raise BadMessage("ldate must be a date (YYYY-MM-DD)") from None
    ltime_ns = _int(v, "ltimenss")
    params = v.get("params")
    if params is not None and not isinstance(params, dict):
        raise BadMessage("params must be an object")
    level = _int(v, "level")
    row = {
        # a time UUID, as the original's: prune of the original's logs read its time
        "id": str(uuid.uuid1()),
        "ldate": ldate[:10],
        "created_at": now_ms,
        "ltime": ltime_ns // 1_000_000 if ltime_ns is not None else now_ms,
        "topic": _text(v, "topic") or _text(v, "id") or subject,
        "name": _text(v, "name"),
        "host": _text(v, "host"),
        "hostname": _text(v, "hostname"),
        "ip": _text(v, "ip"),
        "iphash": _text(v, "iphash"),
        "level": level if level is not None else 0,
        "msg": _text(v, "msg"),
        "params": json.dumps(params or {}),
    }
    for key in ("owner", "oid"):
        value = _uuid(v, key)
        if value is not None:
            row[key] = value
    return row


BUILDERS = {
    "log": ("logs", log_row),
    "count": ("counters", count_row),
    "update": ("updates", update_row),
}


def to_record(kind: str, subject: str, data: bytes, now_ms: int) -> tuple[str, dict]:
    """``(table, row)`` for one message; ``BadMessage`` when it cannot be stored."""
    try:
        v = json.loads(data) if data.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise BadMessage("not JSON") from None
    if not isinstance(v, dict):
        raise BadMessage("not a JSON object")
    table, build = BUILDERS[kind]
    return table, build(v, subject, now_ms)


class Consumer:
    """Subscribes once the client is connected (nats-py re-subscribes after a reconnect)."""

    def __init__(self, client, subjects: dict[str, list[str]] | None = None):
        self.client = client
        # kind -> subjects; the original's config.json listed tic.<kind>.> in its Filter
        self.subjects = {
            kind: (subjects or {}).get(kind)
            or ([] if subjects else [f"tic.{kind}", f"tic.{kind}.>"])
            for kind in KINDS
        }
        self.stats = ConsumeStats()
        self.intake: Intake | None = None
        self.ip_policy: IPPolicy | None = None
        self._task: asyncio.Future | None = None

    def consume_into(self, intake: Intake, ip_policy: IPPolicy | None = None) -> None:
        self.intake = intake
        self.ip_policy = ip_policy

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._subscribe())

    def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _subscribe(self) -> None:
        await self.client.ready.wait()
        nc = self.client.nc
        for kind, subjects in self.subjects.items():
            handler = self._handler(kind)
            for subject in subjects:
                await nc.subscribe(subject, queue=QUEUE_GROUP, cb=handler)
        await nc.flush()
        log.info("NATS: consuming {subjects}", subjects=self.subjects)

    def _handler(self, kind: str):
        async def handle(msg) -> None:
            self.receive(kind, msg.subject, msg.data)

        return handle

    def receive(self, kind: str, subject: str, data: bytes) -> None:
        self.stats.received += 1
        try:
            record = to_record(kind, subject, data, int(time.time() * 1000))
        except BadMessage as e:
            self.stats.rejected += 1
            log.warn("NATS: message on {subject} not stored: {why}", subject=subject, why=e)
            return
        table, row = record
        if table == "logs":
            # IPMode as for every row with an IP (a message's own iphash - the original's was
            # reversible - is never stored); no policy: no IP at all
            ip = row.get("ip", "")
            row["ip"], row["iphash"] = self.ip_policy.stored(ip) if self.ip_policy else ("", "")
        if self.intake is None:  # not wired: nothing would store it
            self.stats.failed += 1
            return
        d = self.intake.accept([record])
        d.addCallbacks(self._accepted, self._failed, errbackArgs=(subject,))

    def _accepted(self, _):
        self.stats.accepted += 1

    def _failed(self, failure, subject):
        self.stats.failed += 1
        log.warn(
            "NATS: message on {subject} not accepted: {why}",
            subject=subject,
            why=failure.getErrorMessage(),
        )
