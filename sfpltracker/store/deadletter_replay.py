"""Listing and replaying dead letters (``DataDirectory/deadletter/<table>.jsonl``).

A store sets aside the rows it refuses for their data (``store/deadletter.py``). Once the
operator fixed them in the file, or changed the schema so they are acceptable, admin command
``deadletter-replay`` inserts them again through the store that owns the data (inside the
running gateway, or offline in the CLI): rows go in with the store's dedup, so a replay after a
resend, or a second replay, never counts a row twice.

How the file is rewritten without losing a line: a replay takes a *snapshot* of the file's
lines, inserts their rows, and then replaces just the snapshot's bytes (under the append lock,
as one atomic rename) by the lines it did not settle. A row the store refuses again is
appended by the store itself, with its new reason, after the snapshot - as are rows that live
traffic sets aside meanwhile - so those stay in the file untouched.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import defer
from twisted.internet.threads import deferToThread

from sfpltracker import admin
from sfpltracker.store.deadletter import DeadLetters
from sfpltracker.store.dedup import DEDUP_KEYS
from sfpltracker.store.interface import Store

TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
CHUNK_ROWS = 5000  # rows per insert: a big file is replayed in bounded inserts
REASON_CHARS = 120  # a reason as shown by ``deadletter list``


@dataclass
class DeadLetterFile:
    """The parsed lines of one file, in order: ``entries`` are (line, entry) pairs."""

    entries: list[tuple[bytes, dict]] = field(default_factory=list)
    unreadable: list[bytes] = field(default_factory=list)  # not JSON, or no "row" object
    lines: list[tuple[bytes, dict | None]] = field(default_factory=list)


def parse(data: bytes) -> DeadLetterFile:
    parsed = DeadLetterFile()
    for line in data.splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not isinstance(entry.get("row"), dict):
                raise ValueError("no row")
        except ValueError:  # an operator's edit gone wrong: kept as it is, never replayed
            parsed.unreadable.append(line)
            parsed.lines.append((line, None))
            continue
        parsed.entries.append((line, entry))
        parsed.lines.append((line, entry))
    return parsed


def fingerprint(table: str, row: dict) -> str:
    """What makes two rows the same: the table's dedup key, else the whole row."""
    key = DEDUP_KEYS.get(table)
    if key and row.get(key):
        return "key:" + str(row[key]).lower()
    return "row:" + json.dumps(row, sort_keys=True, default=str, ensure_ascii=False)


def unique_rows(table: str, parsed: DeadLetterFile) -> dict[str, dict]:
    """One row per fingerprint, the first line's (a resent batch repeats its rows)."""
    rows: dict[str, dict] = {}
    for _, entry in parsed.entries:
        rows.setdefault(fingerprint(table, entry["row"]), entry["row"])
    return rows


def summarize(table: str, parsed: DeadLetterFile) -> dict:
    """Count, oldest and newest time, and the distinct reasons (shortened) with counts."""
    times = [e["time"] for _, e in parsed.entries if isinstance(e.get("time"), str)]
    reasons = Counter(
        short_reason(str(e.get("reason", ""))) for _, e in parsed.entries
    ).most_common()
    return {
        "table": table,
        "rows": len(parsed.entries),
        "unique": len(unique_rows(table, parsed)),
        "unreadable": len(parsed.unreadable),
        "oldest": min(times, default=""),
        "newest": max(times, default=""),
        "reasons": [{"reason": r, "rows": n} for r, n in reasons],
    }


def short_reason(reason: str) -> str:
    reason = " ".join(reason.split())
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 3] + "..."


def list_files(directory: Path, table: str = "") -> list[dict]:
    """A summary per ``<table>.jsonl`` in ``directory`` (read only: no lock, no store)."""
    if table:
        paths = [Path(directory) / f"{check_table(table)}.jsonl"]
    else:
        paths = sorted(Path(directory).glob("*.jsonl"))
    summaries = []
    for path in paths:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        # A line being appended right now is not whole yet: left for the next look.
        summaries.append(summarize(path.stem, parse(data[: data.rfind(b"\n") + 1])))
    return summaries


def check_table(table) -> str:
    if not isinstance(table, str) or not TABLE_NAME.match(table):
        raise admin.AdminError(f"bad table name {table!r}")
    return table


@defer.inlineCallbacks
def replay(store: Store, table: str, dry_run: bool = False):
    """Insert the rows of ``table``'s dead-letter file again; fires with the counts."""
    deadletters = store.deadletters
    if table in deadletters.replaying:
        raise admin.AdminError(f"a replay of {table} is running already")
    deadletters.replaying.add(table)
    try:
        return (yield _replay(store, deadletters, table, dry_run))
    finally:
        deadletters.replaying.discard(table)


@defer.inlineCallbacks
def _replay(store: Store, deadletters: DeadLetters, table: str, dry_run: bool):
    head = yield deferToThread(deadletters.snapshot, table)
    parsed = parse(head)
    rows = unique_rows(table, parsed)
    result = {
        "table": table,
        "rows": len(parsed.entries),
        "duplicates_in_file": len(parsed.entries) - len(rows),
        "unreadable": len(parsed.unreadable),
    }
    if dry_run:
        fresh = list(rows.values())
        if fresh:
            fresh = yield store.without_stored(table, fresh)
            result["already_stored"] = len(rows) - len(fresh)
        result.update(dry_run=True, to_insert=len(fresh))
        return result

    settled: set[str] = set()
    replayed = 0
    stopped = None
    items = list(rows.items())
    for start in range(0, len(items), CHUNK_ROWS):
        chunk = items[start : start + CHUNK_ROWS]
        try:
            replayed += yield store.insert(table, [row for _, row in chunk], dedup=True)
        except Exception as e:  # the store is in trouble: what is not settled stays
            stopped = e
            break
        settled.update(fp for fp, _ in chunk)

    # Lines whose row was settled (stored, already stored, or refused again and so appended
    # anew with its new reason) leave the file; unreadable and unsettled lines stay.
    keep = [
        line for line, e in parsed.lines if e is None or fingerprint(table, e["row"]) not in settled
    ]
    tail = yield deferToThread(deadletters.replace_head, table, len(head), keep)
    refused = {fingerprint(table, e["row"]) for _, e in parse(tail).entries} & settled
    result.update(
        dry_run=False,
        replayed=replayed,
        still_refused=len(refused),
        already_stored=len(settled) - replayed - len(refused),
        left_in_file=len(keep) + len(refused),
    )
    if stopped is not None:
        raise admin.AdminError(
            f"replay of {table} stopped, the store failed: {stopped}; "
            f"{replayed} row(s) replayed, {len(rows) - len(settled)} not tried stay in the file"
        )
    return result


def replay_command(ctx: admin.AdminContext, args: dict):
    """Replay ``args["table"]``'s dead letters (``dry_run``: only count what would be done)."""
    table = check_table(args.get("table"))
    if not ctx.store.deadletters.path(table).exists():
        raise admin.AdminError(f"no dead letters for {table}")
    return replay(ctx.store, table, bool(args.get("dry_run")))
