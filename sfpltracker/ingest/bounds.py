"""Bounds on client JSON, checked at the door (README "Input bounds").

Everything a client sends as JSON (POST bodies, WebSocket messages, JSON text inside a field such
as GET ``params={...}``) is read here, so nothing after it (the params walk, the encoders, the
store's JSON column) meets a value it cannot handle:

* ``loads``: JSON text -> value, raising ``ValueError`` only for what is not JSON. ``NaN`` and
  ``Infinity`` (not JSON, but Python's parser takes them) become null; an integer longer than
  the interpreter converts (4,300 digits) stays its text instead of failing the whole body.
* ``too_deep``: objects and arrays nested more than ``MaxJSONDepth`` levels (an event object is
  level 1). Every walk later is recursive; this keeps each one shallow.
* ``count_keys``: keys at every level, for ``MaxParamsKeys`` (each distinct key is a path, and
  files, of the ``params`` column).

The limits are process-wide (``configure`` sets them from the config once, as
``sys.set_int_max_str_digits`` would): the field coercers that use them take one value and no
settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JsonLimits:
    depth: int = 16  # MaxJSONDepth
    keys: int = 256  # MaxParamsKeys
    params_bytes: int = 65536  # MaxParamsBytes

    @classmethod
    def from_config(cls, cfg) -> JsonLimits:
        return cls(cfg.MaxJSONDepth, cfg.MaxParamsKeys, cfg.MaxParamsBytes)


LIMITS = JsonLimits()


def configure(limits: JsonLimits) -> None:
    global LIMITS
    LIMITS = limits


# Longest integer text kept as a number: 20 characters hold every Int64 and UInt64
# ("-9223372036854775808", "18446744073709551615"); longer ones are out of range anyway.
MAX_INT_CHARS = 20

_BOM = b"\xef\xbb\xbf"


def _constant(_name: str) -> None:
    return None  # NaN, Infinity, -Infinity: not JSON numbers; the field is dropped


def _int_or_text(text: str) -> int | str:
    return int(text) if len(text) <= MAX_INT_CHARS else text


_DECODER = json.JSONDecoder(parse_constant=_constant)
# Only for a body with an integer over the interpreter's 4,300 digits (it fails the first
# parse): a hook on every integer would cost every request.
_LONG_INT_DECODER = json.JSONDecoder(parse_constant=_constant, parse_int=_int_or_text)


class NotJSON(ValueError):
    """Text that is not JSON we can read: not UTF-8, malformed, or nested past the parser."""


def loads(data: bytes | str) -> Any:
    """A client's JSON text -> value, or ``NotJSON`` with a short reason."""
    if isinstance(data, bytes):
        if data.startswith(_BOM):
            data = data[3:]
        try:
            # Strict UTF-8 (json.loads would let encoded surrogates through: 'surrogatepass').
            data = data.decode()
        except UnicodeDecodeError as e:
            raise NotJSON(f"not UTF-8 text: {e.reason} at byte {e.start}") from None
    try:
        return _DECODER.decode(data)
    except json.JSONDecodeError as e:
        raise NotJSON(e.msg) from None
    except RecursionError:
        raise NotJSON("nested too deeply to read") from None
    except ValueError:  # an integer over 4,300 digits
        pass
    try:
        return _LONG_INT_DECODER.decode(data)
    except (ValueError, RecursionError) as e:  # pragma: no cover - the first parse decided
        raise NotJSON(str(e)) from None


def too_deep(value: Any, levels: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``levels`` deep (``value`` is level 1).

    Stops at the limit, so it never recurses further than ``levels`` whatever the input.
    """
    if type(value) is dict:
        children = value.values()
    elif type(value) is list:
        children = value
    else:
        return False
    if levels < 1:
        return True
    for child in children:
        if (type(child) is dict or type(child) is list) and too_deep(child, levels - 1):
            return True
    return False


def count_keys(value: Any) -> int:
    """Keys of every object in ``value``, at every level (arrays of objects included)."""
    if type(value) is dict:
        return len(value) + sum(count_keys(v) for v in value.values())
    if type(value) is list:
        return sum(count_keys(v) for v in value)
    return 0


def has_lone_surrogate(data: Any) -> bool:
    """Whether a decoded JSON value holds a lone surrogate (in a key or a string value): a JSON
    escape such as ``\\ud800`` decodes into a str that is not text and cannot be stored."""
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def json_in_text(text: str) -> Any:
    """The value of JSON text found inside a field (GET ``params={...}``), or None when it is
    not JSON, nests deeper than a field may (``MaxJSONDepth`` less the event's own level) or
    holds a lone surrogate escape."""
    try:
        value = loads(text)
    except NotJSON:
        return None
    if too_deep(value, LIMITS.depth - 1):
        return None
    return None if "\\u" in text and has_lone_surrogate(value) else value
