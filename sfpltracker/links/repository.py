"""The short-link tables in the store: every read and write of links goes through here.

``queries`` counts every statement this module sends to the store (lookups, polls, reloads,
listings); it is exported in ``/metrics`` as ``sfpl_shortlink_store_queries`` so tests and
operators can see that a flood of unknown slugs does not reach the store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from twisted.internet import defer, threads

from sfpltracker.ingest.ids import short_hash
from sfpltracker.links.model import (
    LINK_COLUMNS,
    Link,
    default_destination_host,
    history_row,
    link_from_row,
    redirect_row,
    relative_destination,
    with_org_host,
)
from sfpltracker.store.interface import database_of


def _rows(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


class LinkRepository:
    def __init__(self, store, reactor=None, ignore_key: str = "igqp"):
        self.store = store
        self.reactor = reactor
        self.ignore_key = ignore_key
        self.database = database_of(store)
        self.queries = 0

    def _query(self, sql: str, params: dict | None = None) -> defer.Deferred:
        self.queries += 1
        return self.store.query(sql, "JSONEachRow", params=params)

    def _links(self, data: bytes) -> list[Link]:
        return [link_from_row(r, self.ignore_key) for r in _rows(data)]

    def version(self) -> defer.Deferred:
        """Changes whenever any process sharing the store changes a link.

        ``redirect_history`` only grows (one row per change), so its row count moves on every
        change; ``max(updated_at)`` and the row count of ``redirects`` cover a change whose
        history row failed to land. ``orgs`` rows decide where relative tracked links go.
        """
        db = self.database
        d = self._query(
            f"SELECT (SELECT count() FROM {db}.redirect_history) AS changes, "
            f"(SELECT toUnixTimestamp64Milli(max(updated_at)) FROM {db}.redirects) AS newest, "
            f"(SELECT count() FROM {db}.redirects) AS versions, "
            f"(SELECT count() FROM {db}.orgs) AS orgs, "
            f"(SELECT toUnixTimestamp64Milli(max(updated_at)) FROM {db}.orgs) AS orgs_newest"
        )
        d.addCallback(lambda data: tuple(int(v) for v in _rows(data)[0].values()))
        return d

    def with_org_hosts(self, links: list[Link]) -> defer.Deferred:
        """``links`` with each tracked link to a path sent to its organisation's
        ``ddata.default_destination_host`` (one query for all, none when no link needs it)."""
        oids = {found[0] for link in links if (found := relative_destination(link.urlto, link.oid))}
        if not oids:
            return defer.succeed(links)
        d = self._query(
            # not ``toString(oid) AS oid``: in WHERE that alias would be the text, which
            # matches no UUID of the parameter (the note of issue 16 took it for a chDB bug)
            f"SELECT toString(oid) AS org_id, ddata FROM {self.database}.orgs FINAL "
            "WHERE oid IN {oids:Array(UUID)}",
            {"oids": _array(oids)},
        )

        def apply(data: bytes) -> list[Link]:
            hosts = {r["org_id"]: default_destination_host(r["ddata"]) for r in _rows(data)}
            return [with_org_host(link, hosts) for link in links]

        d.addCallback(apply)
        return d

    def load(self, limit: int, now_ms: int) -> defer.Deferred:
        """Up to ``limit`` live links (not deleted, not expired), parsed off the reactor."""
        d = self._query(
            f"SELECT {LINK_COLUMNS} FROM {self.database}.redirects AS r FINAL "
            "WHERE r.deleted = 0 AND (toUnixTimestamp64Milli(r.expires) = 0 "
            "OR toUnixTimestamp64Milli(r.expires) > {now:Int64}) LIMIT {limit:UInt64}",
            {"now": now_ms, "limit": limit},
        )
        if self.reactor is not None:
            d.addCallback(
                lambda data: threads.deferToThreadPool(
                    self.reactor, self.reactor.getThreadPool(), self._links, data
                )
            )
        else:
            d.addCallback(self._links)
        d.addCallback(self.with_org_hosts)
        return d

    def hosts(self) -> defer.Deferred:
        """The hosts that have live links (fires with a set)."""
        d = self._query(
            f"SELECT DISTINCT host FROM {self.database}.redirects FINAL WHERE deleted = 0"
        )
        d.addCallback(lambda data: {r["host"] for r in _rows(data)})
        return d

    def get(self, key: str, include_deleted: bool = False) -> defer.Deferred:
        """The newest version of ``key``: a ``Link`` (None when absent or deleted).

        With ``include_deleted`` fires with ``(Link, deleted)`` or None, for the admin API.
        """
        d = self._query(
            f"SELECT {LINK_COLUMNS} FROM {self.database}.redirects AS r FINAL "
            "WHERE r.urlfrom = {key:String} LIMIT 1",
            {"key": key},
        )

        def pick(data: bytes):
            rows = _rows(data)
            if not rows:
                return None
            link = link_from_row(rows[0], self.ignore_key)
            deleted = bool(int(rows[0]["deleted"]))
            return self.with_org_hosts([link]).addCallback(
                lambda links: (links[0], deleted) if include_deleted else
                (None if deleted else links[0])
            )  # fmt: skip

        d.addCallback(pick)
        return d

    def list(self, host: str, oid: str) -> defer.Deferred:
        """The live links (expired ones included) of ``host`` owned by organisation ``oid``."""
        d = self._query(
            f"SELECT {LINK_COLUMNS} FROM {self.database}.redirects AS r FINAL "
            "WHERE r.host = {host:String} AND r.oid = {oid:UUID} AND r.deleted = 0 "
            "ORDER BY r.path",
            {"host": host, "oid": oid},
        )
        d.addCallback(self._links)
        d.addCallback(self.with_org_hosts)
        return d

    # Sequence, not list: inside the class ``list`` names the method above.
    def clicks(self, links: Sequence[Link]) -> defer.Deferred:
        """Clicks recorded per link id (``events`` with ``ename = 'short_rdr'``, ``rid`` = id)."""
        if not links:
            return defer.succeed({})
        d = self._query(
            f"SELECT toString(e.rid) AS id, uniqExact(e.eid) AS clicks "
            f"FROM {self.database}.events AS e WHERE e.ename = 'short_rdr' "
            "AND e.hhash IN {hhashes:Array(String)} AND e.rid IN {ids:Array(UUID)} GROUP BY e.rid",
            {
                "hhashes": _array({short_hash(link.host) for link in links}),
                "ids": _array({link.id for link in links}),
            },
        )
        d.addCallback(lambda data: {r["id"]: int(r["clicks"]) for r in _rows(data)})
        return d

    @defer.inlineCallbacks
    def write(self, link: Link, action: str, urlfrom: str, updater: str, now_ms: int,
              searchto: str | None = None):  # fmt: skip
        """Store a new version of ``link`` (a tombstone for ``delete``) and its history row.

        The ``redirects`` row goes first: a history row is what tells other processes to
        reload, so it must not arrive before the link it announces.
        """
        yield self.store.insert(
            "redirects", [redirect_row(link, updater, now_ms, deleted=action == "delete")]
        )
        yield self.store.insert(
            "redirect_history", [history_row(link, action, urlfrom, updater, now_ms, searchto)]
        )


def _array(values) -> str:
    """A ClickHouse array literal for a query parameter (values are UUIDs or short hashes)."""
    return "[" + ",".join("'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"
                          for v in sorted(values)) + "]"  # fmt: skip
