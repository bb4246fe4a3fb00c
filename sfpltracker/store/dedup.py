"""Deduplication of retried and replayed rows, shared by every store.

A batch whose insert failed may still have landed (the server committed it, then the
connection broke before the answer). So retries and replays call ``insert(..., dedup=True)``
and the store first asks which of the batch's keys are already stored, then inserts only the
others. Each store asks in its own way (a chDB query, a server query with the keys sent as an
external table); what the keys are and how the answer filters the batch lives here.
"""

from __future__ import annotations

# The column that identifies a row for deduplication of replays and retries. Tables without
# an entry are inserted as they come (their engines collapse duplicates, or they have no key).
DEDUP_KEYS = {"events": "eid", "payments": "id", "agreed": "id", "agreements": "id", "logs": "id"}


def keys_to_check(table: str, rows: list[dict]) -> tuple[str | None, list[str]]:
    """(key column, the batch's key values) - (None, []) when ``table`` has no dedup key."""
    key = DEDUP_KEYS.get(table)
    if key is None:
        return None, []
    return key, [r[key] for r in rows if r.get(key)]


def drop_stored(rows: list[dict], key: str, stored: set[str]) -> list[dict]:
    """The rows whose key is not in ``stored`` (keys compared as lower-case text)."""
    if not stored:
        return rows
    return [r for r in rows if str(r.get(key) or "").lower() not in stored]
