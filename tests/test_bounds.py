"""Unit tests of the input bounds (ingest/bounds.py) and of the coercions that met huge values."""

from __future__ import annotations

import json

import pytest

from sfpltracker.config import ConfigError, load_dict
from sfpltracker.ingest import bounds
from sfpltracker.ingest.fields import param_value, to_float, to_int, to_json_object
from sfpltracker.ingest.messaging import to_json_object_text, to_time_ms, to_uuid_list
from sfpltracker.ingest.parse import BadInput, RefusedItem, item_problem, json_events
from sfpltracker.ingest.payments import parse_time_ms
from tests.test_ingest import row_for

LONG = "9" * 4301


def nested(levels: int, leaf=1):
    for _ in range(levels):
        leaf = [leaf]
    return leaf


@pytest.fixture
def limits():
    """Set the process-wide limits for one test, then put the defaults back."""
    yield bounds.configure
    bounds.configure(bounds.JsonLimits())


def test_loads_reads_what_python_would_refuse_or_misread():
    assert bounds.loads(b'{"a": NaN, "b": Infinity, "c": -Infinity}') == dict.fromkeys("abc")
    assert bounds.loads(b'{"n": %s, "m": 12}' % LONG.encode()) == {"n": LONG, "m": 12}
    assert bounds.loads(b"[-%s]" % LONG.encode()) == ["-" + LONG]
    assert bounds.loads(b'\xef\xbb\xbf{"bom": 1}') == {"bom": 1}
    assert bounds.loads('{"text": 1}') == {"text": 1}
    for bad, reason in (
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'{"a": "\xed\xa0\x80"}', "not UTF-8"),  # a surrogate encoded in UTF-8
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        (b"{", "Expecting"),
    ):
        with pytest.raises(bounds.NotJSON, match=reason):
            bounds.loads(bad)


def test_too_deep_counts_the_value_itself_as_level_one():
    assert not bounds.too_deep(1, 0)
    assert not bounds.too_deep({"a": nested(15)}, 16)
    assert bounds.too_deep({"a": nested(16)}, 16)
    assert bounds.too_deep([{}], 1) and not bounds.too_deep([], 1)
    assert bounds.too_deep(nested(900), 16)  # stops at the limit: no RecursionError


def test_count_keys_counts_every_level():
    assert bounds.count_keys({"a": 1, "b": {"c": [{"d": 1, "e": 2}, 3]}}) == 5
    assert bounds.count_keys([1, "x"]) == 0


def test_json_events_refuses_a_too_deep_event_alone(limits):
    body = json.dumps([{"ename": "a"}, {"p": nested(16)}, {"p": nested(15)}, 7]).encode()
    items = json_events(body, 10)
    assert items[0] == {"ename": "a"} and items[2] == {"p": nested(15)}
    assert isinstance(items[1], RefusedItem)
    assert [item_problem(i) for i in items] == [
        None,
        "nested deeper than MaxJSONDepth (16)",
        None,
        "not a JSON object",
    ]
    # Scalars and flat events around a deep one do not hide it (the bracket count bounds it).
    for others in ([7] * 400, [{"a": 1}] * 400, ["[[[[[[[[[[[["] * 400):
        body = json.dumps([*others, {"p": nested(16)}, {"p": nested(15)}]).encode()
        items = json_events(body, 500)
        assert [item_problem(i) for i in items[-2:]] == [
            "nested deeper than MaxJSONDepth (16)",
            None,
        ]
    limits(bounds.JsonLimits(depth=3))
    assert item_problem(json_events(b'{"p": {"q": {"r": [1]}}}', 1)[0]) == (
        "nested deeper than MaxJSONDepth (3)"
    )
    assert json_events(b'{"p": {"q": {"r": 1}}}', 1) == [{"p": {"q": {"r": 1}}}]
    with pytest.raises(BadInput, match="malformed JSON: not UTF-8"):
        json_events(b'{"a": "\xc3"}', 1)


def test_json_text_inside_a_field_is_dropped_when_too_deep():
    assert to_json_object(json.dumps({"a": nested(14)})) == {"a": nested(14)}
    assert to_json_object(json.dumps({"a": nested(15)})) is None  # the event is level 1
    assert to_json_object("{" * 5000) is None
    assert to_json_object_text('{"a": ' + "[" * 5000) is None
    assert to_uuid_list("[" * 5000 + "]" * 5000) is None
    assert to_json_object('{"a": "\\ud800"}') is None  # a lone surrogate escape: not text
    assert to_json_object('{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}


def test_params_beyond_the_key_and_byte_limits_refuse_the_event(limits):
    assert json.loads(row_for({"ename": "x", **{f"k{i}": i for i in range(256)}})["params"])
    with pytest.raises(BadInput, match=r"MaxParamsKeys \(256\)"):
        row_for({"ename": "x", **{f"k{i}": i for i in range(257)}})
    with pytest.raises(BadInput, match="MaxParamsKeys"):
        row_for({"params": {"a": [{"b": 1, "c": 2}] * 200}})  # 401 keys at all levels
    limits(bounds.JsonLimits(keys=3, params_bytes=30))
    assert json.loads(row_for({"params": {"a": {"b": "c:d:e:f"}}, "x": 1})["params"]) == {
        "a": {"b": "c:d:e:f"},
        "x": 1,
    }
    with pytest.raises(BadInput, match="MaxParamsKeys"):
        row_for({"params": {"a": {"b": 1, "c": 2, "d": 3}}})
    with pytest.raises(BadInput, match=r"MaxParamsBytes \(30\)"):
        row_for({"note": "y" * 30})


def test_huge_numbers_are_dropped_or_kept_as_text_never_raise():
    big = int("9" * 4000)
    assert param_value(big) == str(big)
    assert param_value(2**64 - 1) == 2**64 - 1 and param_value(-(2**63)) == -(2**63)
    assert param_value(2**64) == str(2**64) and param_value(-(2**63) - 1) == str(-(2**63) - 1)
    assert param_value(LONG) == LONG and param_value(" 42 ") == 42
    assert to_int(LONG) is None and to_int(big) is None and to_int("1" * 64 + ".0") is None
    assert to_float(big) is None and to_float(LONG) is None and to_float(float("nan")) is None
    for value in (float("inf"), float("nan"), big, -big, 2**63):
        assert parse_time_ms(value) is None and to_time_ms(value) is None
    assert parse_time_ms("0001-01-01T00:00:00Z") is None
    assert parse_time_ms(1_700_000_000_000) == 1_700_000_000_000
    row = row_for({"ename": "x", "n": big, "lat": big, "duration": LONG})
    assert json.loads(row["params"]) == {"n": str(big)}
    assert "lat" not in row and "duration" not in row


def test_config_keys_and_their_checks():
    cfg = load_dict({})
    assert (cfg.MaxJSONDepth, cfg.MaxParamsKeys, cfg.MaxParamsBytes) == (16, 256, 65536)
    assert bounds.JsonLimits.from_config(cfg) == bounds.JsonLimits()
    for key, value in (("MaxJSONDepth", 1), ("MaxParamsKeys", 0), ("MaxParamsBytes", 0)):
        with pytest.raises(ConfigError, match=key):
            load_dict({key: value})


def test_params_text_kept_per_field_set_still_follows_the_limits_and_types(limits):
    """``_params_text`` keeps the text of text-only field sets (a short link's clicks send the
    same ones): a limit lowered later still refuses them, and other types are not mixed up."""
    from sfpltracker.ingest.event import _params_text

    fields = {"to": "https://example.com/landing", "relation": "redirect"}
    text = _params_text(dict(fields))
    assert json.loads(text) == fields
    assert _params_text(dict(fields)) == text  # kept, the same text
    limits(bounds.JsonLimits(params_bytes=len(text) - 1))
    with pytest.raises(BadInput, match="MaxParamsBytes"):
        _params_text(dict(fields))
    limits(bounds.JsonLimits(keys=1))
    with pytest.raises(BadInput, match="MaxParamsKeys"):
        _params_text(dict(fields))
    limits(bounds.JsonLimits())
    # 1 == 1.0 == True as dict keys: each keeps its own JSON
    for _ in range(2):
        assert [_params_text({"n": v}) for v in ("1", 1, True, 1.0, "x")] == [
            '{"n":1}',
            '{"n":1}',
            '{"n":true}',
            '{"n":1.0}',
            '{"n":"x"}',
        ]
