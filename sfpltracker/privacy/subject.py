"""A data subject (one person) and the rows that hold them, for ``forget`` and ``export-subject``.

A subject is named by visitor ids (``--vid``), user ids (``--uid``) and e-mail hashes
(``--ehash``/``--email``). Before anything is deleted the subject is *resolved* into what their
rows carry: the session ids of their events (sessions are derived per ``sid``), the order ids of
their payments (``ltv`` keeps one row per ``orid``), the stored IPs of their events (only when
``IPMode`` stores a per-person value, ``full`` or ``hash``: ``dailies`` counts per stored IP).
With ``linked`` the visitor ids and user ids that appear together with the given ones in
``events`` are added (a user's devices, a device's user) - off by default because a shared
device would pull in another person.

A row holds the subject when one of its columns carries one of these values:

- ``vid``, ``uid``, ``ehash``, ``sid`` columns, in any table;
- ``id`` + ``id_type`` (``ltv``): ``('vid', vid)``, ``('uid', uid)``, ``('orid', orid)``;
- ``ip`` in a table with no id column at all (``dailies``), for the IPs above.

Rows of *other* visitors that name the subject as their referrer (``ref``) are kept with
``ref`` cleared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from twisted.internet import defer

from sfpltracker.ingest.ids import ZERO_UUID, parse_uuid
from sfpltracker.privacy.catalogue import (
    KEEP_TABLES,
    Table,
    database_of,
    string_list,
    uuid_list,
    valid_ehash,
)

ID_COLUMNS = ("vid", "uid", "ehash", "sid")


class SubjectError(ValueError):
    pass


@dataclass
class Subject:
    vids: list[str] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)
    ehashes: list[str] = field(default_factory=list)
    sids: list[str] = field(default_factory=list)
    orids: list[str] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)

    @classmethod
    def from_args(cls, args: dict) -> Subject:
        def uuids(key):
            out = []
            for value in args.get(key) or []:
                parsed = parse_uuid(value)
                if parsed is None or parsed == ZERO_UUID:
                    raise SubjectError(f"{key}: {value!r} is not a (non-zero) UUID")
                out.append(parsed)
            return sorted(set(out))

        ehashes = sorted(set(args.get("ehashes") or []))
        for value in ehashes:
            if not isinstance(value, str) or not valid_ehash(value):
                raise SubjectError(f"ehashes: {value!r} is not an e-mail hash")
        ips = sorted({str(ip) for ip in args.get("ips") or [] if ip})
        subject = cls(uuids("vids"), uuids("uids"), ehashes, uuids("sids"), uuids("orids"), ips)
        if not (subject.vids or subject.uids or subject.ehashes):
            raise SubjectError("name the subject: at least one vid, uid or ehash")
        return subject

    def as_dict(self) -> dict:
        return asdict(self)

    def condition(self, table: Table) -> str | None:
        """The WHERE clause matching this subject's rows in ``table``, or None."""
        if table.name in KEEP_TABLES:
            return None
        values = {"vid": self.vids, "uid": self.uids, "sid": self.sids}
        parts = [
            f"`{col}` IN ({uuid_list(v)})" for col, v in values.items() if v and table.has(col)
        ]
        if self.ehashes and table.has("ehash"):
            parts.append(f"`ehash` IN ({string_list(self.ehashes)})")
        if table.has("id", "id_type"):
            for kind, ids in (("vid", self.vids), ("uid", self.uids), ("orid", self.orids)):
                if ids:
                    parts.append(f"(`id_type` = '{kind}' AND `id` IN ({uuid_list(ids)}))")
        if self.ips and table.has("ip") and not any(table.has(c) for c in ID_COLUMNS):
            parts.append(f"`ip` IN ({string_list(self.ips)})")
        return " OR ".join(parts) if parts else None

    def ref_condition(self, table: Table) -> str | None:
        """Rows of others that name one of the subject's vids as their referrer."""
        if table.name in KEEP_TABLES or not self.vids or not table.has("ref"):
            return None
        if "UUID" not in table.columns["ref"]:
            return None
        return f"`ref` IN ({uuid_list(self.vids)})"


@defer.inlineCallbacks
def _column(store, sql: str) -> list[str]:
    raw = yield store.query(sql, "TabSeparated")
    return sorted({v for v in raw.decode().split("\n") if v and v != ZERO_UUID})


@defer.inlineCallbacks
def resolve(store, tables: dict[str, Table], subject: Subject, ip_mode: str, linked: bool):
    """The subject completed with what their rows carry (see the module docstring)."""
    db = database_of(store)
    events = tables.get("events")
    if events is not None and linked:
        seed = _seed_condition(subject, events)
        if seed:
            more_vids = yield _column(
                store, f"SELECT DISTINCT toString(vid) FROM {db}.events WHERE {seed}"
            )
            more_uids = yield _column(
                store, f"SELECT DISTINCT toString(uid) FROM {db}.events WHERE {seed}"
            )
            subject.vids = sorted(set(subject.vids) | set(more_vids))
            subject.uids = sorted(set(subject.uids) | set(more_uids))
    sids: set[str] = set(subject.sids)
    for name in ("events", "payments", "agreed"):
        table = tables.get(name)
        seed = _seed_condition(subject, table) if table is not None else None
        if seed and table.has("sid"):
            found = yield _column(
                store, f"SELECT DISTINCT toString(sid) FROM {db}.`{name}` WHERE {seed}"
            )
            sids |= set(found)
    subject.sids = sorted(sids)
    payments = tables.get("payments")
    seed = _seed_condition(subject, payments) if payments is not None else None
    if seed and payments.has("orid"):
        found = yield _column(
            store, f"SELECT DISTINCT toString(orid) FROM {db}.payments WHERE {seed}"
        )
        subject.orids = sorted(set(subject.orids) | set(found))
    if ip_mode in ("full", "hash") and events is not None:
        seed = _seed_condition(subject, events)
        if seed:
            found = yield _column(
                store, f"SELECT DISTINCT ip FROM {db}.events WHERE ({seed}) AND ip != ''"
            )
            subject.ips = sorted(set(subject.ips) | set(found))
    return subject


def _seed_condition(subject: Subject, table: Table | None) -> str | None:
    """Rows carrying one of the identifiers the operator named (not the derived ones)."""
    if table is None:
        return None
    named = Subject(vids=subject.vids, uids=subject.uids, ehashes=subject.ehashes)
    return named.condition(table)
