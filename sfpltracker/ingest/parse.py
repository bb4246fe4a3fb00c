"""Every input form of an event, turned into plain dicts with lower-cased keys.

GET query strings, REST path pairs (``/tr/v1/tr/vid/X/ename/page_view``), a JSON object, a JSON
array of objects, and WebSocket frames all end up as ``dict[str, Any]`` here, so the event model
treats them the same way (unknown keys go to ``params`` from every form).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote

from sfpltracker.ingest import bounds


class BadInput(ValueError):
    """Input the client must fix: answered with 400 and this message."""


# A JSON escape of a UTF-16 surrogate (\ud800-\udfff): a pair is one character, a lone one is
# not text at all; Python decodes it into a str that cannot be stored (docs/durability.md).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def path_pairs(rest: str) -> dict[str, str]:
    """``vid/X/ename/page_view`` -> ``{"vid": "X", "ename": "page_view"}``.

    ``rest`` is the path after the route prefix. An odd trailing key is ignored; values keep
    their case; segments are percent-decoded after splitting, so ``%2F`` stays inside a value.
    """
    rest = rest.strip("/")
    if not rest:
        return {}
    parts = rest.split("/")
    if "%" in rest:  # most paths have nothing encoded: no unquote() per segment then
        parts = [unquote(p) for p in parts]
    # an odd trailing key has no value: zip stops before it
    pairs = zip(parts[::2], parts[1::2], strict=False)
    return {key.lower(): value for key, value in pairs if key}


def query_pairs(query: str, ignore_key: str) -> dict[str, str]:
    """Query parameters, first value wins; ``utm_`` dropped from keys unless ``ignore_key``.

    With ``ignore_key`` present (``igqp`` by default) the query string is not ingested at all,
    as in the original.
    """
    if not query:
        return {}  # most tracking calls carry their fields in the path or the body
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() == ignore_key for k, _ in pairs):
        return {}
    out: dict[str, str] = {}
    for key, value in pairs:
        key = key.lower().replace("utm_", "")
        if key and key not in out:
            out[key] = value
    return out


class RefusedItem(str):
    """An item of a JSON body refused on its own (the others stand): its text is the reason."""


def item_problem(item: Any) -> str | None:
    """Why an item of ``json_events`` is not an event, or None for an object."""
    if isinstance(item, dict):
        return None
    return item if isinstance(item, RefusedItem) else "not a JSON object"


def json_events(body: bytes, max_events: int) -> list[Any]:
    """A JSON object or array from a POST body, as a list of items (not yet checked).

    Raises ``BadInput`` for malformed JSON, an empty array or too many events. Items that are
    not objects are returned as they are, and items nested deeper than ``MaxJSONDepth`` as a
    ``RefusedItem``, so the caller can refuse them one by one (``item_problem``).
    """
    if not body.strip():
        return []
    try:
        data = bounds.loads(body)
    except bounds.NotJSON as e:
        raise BadInput(f"malformed JSON: {e}") from None
    if isinstance(data, dict):
        items = [data]
    elif isinstance(data, list):
        if len(data) > max_events:
            raise BadInput(f"too many events in one batch: {len(data)} > {max_events}")
        items = data
    else:
        raise BadInput("expected a JSON object or an array of objects")
    depth = bounds.LIMITS.depth
    if _deepest_possible(body, items, data is items) > depth:
        items = [_bounded(item, depth) for item in items]
    if b"\\u" in body and _SURROGATE_ESCAPE.search(body) and bounds.has_lone_surrogate(items):
        raise BadInput(
            "malformed JSON: a lone UTF-16 surrogate escape (\\ud800-\\udfff) is not text"
        )
    return items


def _deepest_possible(body: bytes, items: list, wrapped: bool) -> int:
    """An upper bound of the nesting of any item, from the body's brackets alone.

    An item nests at most one level per bracket inside it; every other object or array item
    and the wrapping array hold at least one bracket each that it cannot have. Counted in C
    (bytes.count, list.count), so a batch of flat events skips the walk of ``bounds.too_deep``.
    """
    brackets = body.count(b"{") + body.count(b"[")
    kinds = list(map(type, items))
    containers = kinds.count(dict) + kinds.count(list)
    return brackets - containers + 1 - (1 if wrapped else 0)


def _bounded(item: Any, depth: int) -> Any:
    if bounds.too_deep(item, depth):
        return RefusedItem(f"nested deeper than MaxJSONDepth ({depth})")
    return item


def lower_keys(obj: dict) -> dict:
    # (JSON keys are text already: ``str()`` only for the others)
    return {(k if type(k) is str else str(k)).lower(): v for k, v in obj.items()}
