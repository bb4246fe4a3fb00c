"""Retention: which rows ``python -m sfpltracker prune`` deletes.

Every data table (``catalogue.KEEP_TABLES`` aside) is pruned on the column that dates its rows
(``created_at``, ``date``, ``day``, ``last_seen``, ...):

- ``DataRetentionDays`` (0 = keep forever): rows older than that many days;
- jurisdictions: in tables of a person's rows (a ``country`` column next to one naming a
  person: ``vid``, ``uid``, ``sid``, ``ehash``, ``ip``), rows located in a jurisdiction (its
  ``countries``, or ``<country>-<region>`` in its ``regions``) older than its
  ``retention_days`` (0 = no limit of its own). The shorter of the two limits wins. Counts per
  country (``dash_segments``, ``dash_page_segs``, ``dash_device_segs``: no row names anyone)
  are kept as the other rollups are; ``dash_session_segs`` (sid, country, region) is pruned.

"Older than N days" means dated strictly before ``now - N * 86400 s`` (for a ``Date`` column:
on a day before that instant's day). ``--logs-only`` restricts the run to the log tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from twisted.internet import defer

from sfpltracker.privacy.catalogue import (
    KEEP_TABLES,
    LOG_TABLES,
    Table,
    database_of,
    string_list,
    time_literal,
)

DAY_MS = 86_400_000


# A row holding one of these names a person: a jurisdiction's retention applies to it.
PERSON_COLUMNS = ("vid", "uid", "sid", "ehash", "ip")


@dataclass
class Jurisdiction:
    regulation: str
    retention_days: int
    countries: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)


@dataclass
class PruneStep:
    table: str
    column: str
    where: str
    rules: list[str]  # what the condition means, for the operator

    def as_dict(self) -> dict:
        return {
            "table": self.table,
            "column": self.column,
            "where": self.where,
            "rules": self.rules,
        }


@defer.inlineCallbacks
def read_jurisdictions(store):
    db = database_of(store)
    raw = yield store.query(
        f"SELECT regulation, retention_days, countries, regions FROM {db}.jurisdictions FINAL "
        "WHERE retention_days > 0 ORDER BY regulation",
        "JSONEachRow",
    )
    out = []
    for line in raw.decode().splitlines():
        if line.strip():
            rec = json.loads(line)
            out.append(
                Jurisdiction(
                    rec["regulation"],
                    int(rec["retention_days"]),
                    [c.upper() for c in rec["countries"]],
                    [r.upper() for r in rec["regions"]],
                )
            )
    return out


def plan(
    tables: dict[str, Table],
    retention_days: int,
    jurisdictions: list[Jurisdiction],
    now_ms: int,
    logs_only: bool = False,
) -> tuple[list[PruneStep], list[dict]]:
    """The delete condition of each table, and the tables skipped (with why)."""
    steps, skipped = [], []
    for name in sorted(tables):
        table = tables[name]
        if name in KEEP_TABLES:
            skipped.append({"table": name, "why": "configuration table, never pruned"})
            continue
        if logs_only and name not in LOG_TABLES:
            continue
        column = table.time_column
        if column is None:
            skipped.append({"table": name, "why": "no date column"})
            continue
        kind = table.columns[column]
        conditions, rules = [], []
        if retention_days > 0:
            cutoff = now_ms - retention_days * DAY_MS
            conditions.append(f"`{column}` < {time_literal(kind, cutoff)}")
            rules.append(f"DataRetentionDays={retention_days}")
        if table.has("country") and any(table.has(c) for c in PERSON_COLUMNS):
            for j in jurisdictions:
                if retention_days and j.retention_days >= retention_days:
                    continue  # the global limit is already shorter
                located = []
                if j.countries:
                    located.append(f"upper(`country`) IN ({string_list(j.countries)})")
                if j.regions and table.has("region"):
                    located.append(
                        f"upper(concat(`country`, '-', `region`)) IN ({string_list(j.regions)})"
                    )
                if not located:
                    continue
                cutoff = now_ms - j.retention_days * DAY_MS
                conditions.append(
                    f"(`{column}` < {time_literal(kind, cutoff)} AND ({' OR '.join(located)}))"
                )
                rules.append(f"{j.regulation}={j.retention_days}")
        if not conditions:
            skipped.append({"table": name, "why": "no retention applies"})
            continue
        steps.append(PruneStep(name, column, " OR ".join(conditions), rules))
    return steps, skipped
