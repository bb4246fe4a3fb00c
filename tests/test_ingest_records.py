"""``EventModel.records()``: the one way input becomes records, for every transport.

HTTP (``/tr/``, ``/str/``, ``/img/``), WebSocket messages, redirects and short-link clicks,
``/pub/`` downloads and the pages the edge serves all call it; these tests pin what it returns
for each kind of input item, and ``payment_records()`` / ``consent()`` for ``/ltv/`` and
``/ppi/agree``.
"""

import ast
import uuid
from pathlib import Path

import pytest

from sfpltracker.ingest.ids import parse_uuid
from sfpltracker.ingest.parse import BadInput, RefusedItem
from sfpltracker.privacy.useragent import UserAgentEnricher
from tests.test_ingest import NOW, model, req

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
TID = str(uuid.uuid4())


def test_each_item_of_a_batch_stands_or_is_refused_alone():
    eid = str(uuid.uuid4())
    items = [
        {"ENAME": "Page_View", "eid": eid},
        ["not", "an", "object"],
        RefusedItem("nested deeper than MaxJSONDepth (1)"),
        {"ename": "reply", "tid": TID, "subject": "hi"},
    ]
    got = model().records(items, req())
    assert got.problems == [
        "event 1: not a JSON object",
        "event 2: nested deeper than MaxJSONDepth (1)",
    ]
    tables = [table for table, _ in got.records]
    # the event with a thread brings its messaging rows, right after its events row
    assert tables == ["events", "events", "mthreads", "mstore", "mtriage"]
    first, second = got.records[0][1], got.records[1][1]
    assert first["ename"] == "page_view" and first["eid"] == eid  # keys lower-cased
    assert got.eids == [eid, None, None, second["eid"]]
    assert got.accepted == 2
    assert got.records[3][1]["mid"] == second["eid"] and got.records[2][1]["tid"] == TID
    # one visitor for the request: every event carries its vid and sid
    assert {first["vid"], second["vid"]} == {got.visitor.vid}
    assert {first["sid"], second["sid"]} == {got.visitor.sid}


def test_the_requests_shared_pairs_are_part_of_every_event_and_its_keys_win():
    vid = str(uuid.uuid4())
    base = {"app": "shop", "ename": "from_path", "vid": vid}
    got = model().records([{"Ename": "own"}, {}], req(), base)
    rows = [row for _, row in got.records]
    assert [r["ename"] for r in rows] == ["own", "from_path"]
    assert all(r["app"] == "shop" for r in rows)
    assert got.visitor.vid == vid and all(r["vid"] == vid for r in rows)  # no vid cookie


def test_no_object_at_all_refuses_everything():
    got = model().records([1, "x"], req())
    assert got.records == [] and got.accepted == 0 and got.eids == [None, None]
    assert len(got.problems) == 2


def test_a_bot_is_dropped_with_drop_bots_its_own_eid_still_named():
    m = model(drop_bots=True, enrichers=(UserAgentEnricher(),))
    eid = str(uuid.uuid4())
    got = m.records([{"ename": "a", "eid": eid}, {"ename": "b", "eid": "nope"}],
                    req(user_agent=GOOGLEBOT))  # fmt: skip
    assert got.records == [] and got.problems == [] and got.accepted == 0
    assert got.eids == [eid, None]
    kept = model(enrichers=(UserAgentEnricher(),)).records(
        [{"ename": "a"}], req(user_agent=GOOGLEBOT)
    )
    assert kept.accepted == 1 and kept.records[0][1]["bot"] == 1


def test_server_events_and_the_backends_user_agent():
    vid = str(uuid.uuid4())
    backend = model().records([{"ename": "x", "vid": vid}], req(), server=True,
                              with_user_agent=False)  # fmt: skip
    row = backend.records[0][1]
    assert row["server"] == 1 and row["vid"] == vid and row["bhash"] == ""
    assert not backend.visitor.cookies_allowed  # /str/ sets no cookie
    visitors = model().records([{"ename": "x"}], req(), server=True)  # tracked for the visitor
    assert visitors.records[0][1]["bhash"] != ""


def test_a_connections_visitor_is_kept_a_cookieless_one_decided_per_day():
    m = model()
    r = req()
    connection = m.visitor(r, {})
    got = m.records([{"ename": "x"}], req(now_ms=NOW + 5), visitor=connection)
    assert got.visitor is connection and got.records[0][1]["vid"] == connection.vid

    gpc = {"sec-gpc": "1"}
    day1 = m.visitor(req(headers=gpc), {})
    assert day1.cookieless
    next_day = m.records([{"ename": "x"}], req(headers=gpc, now_ms=NOW + 86_400_000), visitor=day1)
    assert next_day.visitor.cookieless and next_day.visitor.vid != day1.vid
    assert next_day.records[0][1]["vid"] == next_day.visitor.vid


def test_payment_records():
    vid = str(uuid.uuid4())
    records = model().payment_records({"AMT": 5, "payments": [{"amt": 1}, {"amt": 2}]},
                                      req(cookies={"vid": vid}))  # fmt: skip
    assert [t for t, _ in records] == ["payments", "payments"]
    assert [r["revenue"] for _, r in records] == [1.0, 2.0]
    assert all(r["vid"] == vid for _, r in records)
    with pytest.raises(BadInput):
        model().payment_records({"payments": []}, req())


def test_consent_decides_the_visitor():
    m = model()
    granted = m.consent({"CFLAGS": 1280}, req())  # essential + analytics
    table, row = granted.record
    assert table == "agreed" and row["cflags"] == 1280
    assert granted.granted and granted.cookies_allowed
    assert parse_uuid(granted.vid) and row["vid"] == granted.vid  # new: becomes the vid cookie

    refused = m.consent({"cflags": 256}, req())  # essential only
    assert not refused.granted  # no cookie: the day's cookieless id
    assert refused.vid == m.cookieless.visitor_id(
        req().day, "example.com", req().ip, req().user_agent
    )

    gpc = m.consent({"cflags": 1280}, req(headers={"sec-gpc": "1"}))
    assert not gpc.cookies_allowed and gpc.vid != granted.vid

    known = str(uuid.uuid4())
    assert m.consent({"cflags": 1280, "vid": known}, req()).vid == known
    with pytest.raises(BadInput):
        m.consent({}, req())


def test_rows_are_built_in_ingest_only():
    """Outside ``ingest/`` nothing builds rows itself: every transport calls the event model."""
    root = Path(__file__).resolve().parents[1] / "sfpltracker"
    builders = ("event_row", "messaging_records", "event_records", "payment_rows", "agreed_row")
    found = []
    for path in root.rglob("*.py"):
        if path.parent.name == "ingest":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = getattr(node, "attr", None) or getattr(node, "id", None)
            if isinstance(node, ast.Attribute | ast.Name) and name in builders:
                found.append(f"{path.relative_to(root)}:{node.lineno} {name}")
    assert found == []
