"""The Conversions API output (notify/facebook.py) against a local Graph API contract server
(tests/graph_api.py), with real gateway processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, task

from sfpltracker.config import ConfigError, load_dict
from sfpltracker.notify import facebook as facebook_module
from sfpltracker.notify.facebook import FacebookOutput, normalise_email, normalise_phone
from sfpltracker.pipeline.spool import Position
from tests.gateway_process import GatewayProcess
from tests.graph_api import GraphAPI
from tests.test_workers import process, wait_until

PIXEL = "1234567890"
TOKEN = "EAAtest-token"
CONSENT = "CookieConsent=5376"  # essential 256 + analytics 1024 + marketing 4096
NO_MARKETING = "CookieConsent=1280"  # essential + analytics
UA = "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def facebook(graph: GraphAPI, **extra) -> dict:
    entry = {
        "Type": "facebook",
        "PixelId": PIXEL,
        "AccessToken": TOKEN,
        "Events": ["Purchase", "Lead"],
        "GraphURL": graph.url,
        "Timeout": 1,
        "TestEventCode": "TEST123",
    }
    entry.update(extra)
    return {"Notify": [entry], "TrustedProxies": ["127.0.0.1/32"]}


def track(gw, events, cookie=None, headers=None, ip="203.0.113.7"):
    h = {"User-Agent": UA, "X-Forwarded-For": ip, **(headers or {})}
    if cookie:
        h["Cookie"] = cookie
    resp = gw.http("POST", "/tr/v1/tr/", json_body=events, headers=h)
    assert resp.status in (200, 204), resp
    return resp


def purchase(**fields):
    return {
        "ename": "Purchase",
        "eid": str(uuid.uuid4()),
        "url": "https://shop.example/checkout",
        "value": 19.99,
        "currency": "usd",
        **fields,
    }


def metric(gw, name: str, **labels) -> float:
    text = gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no metric {name} {labels}")


def wait_metric(gw, name: str, value: float, timeout: float = 15, **labels) -> None:
    deadline = time.monotonic() + timeout
    while (got := metric(gw, name, pixel=PIXEL, **labels)) != value:
        assert time.monotonic() < deadline, f"{name} {labels}: {got}, expected {value}"
        time.sleep(0.1)


def once_each(graph: GraphAPI, eids) -> None:
    ids = graph.event_ids()
    assert sorted(ids) == sorted(set(ids)), "an event arrived twice"
    assert set(eids) <= set(ids)


# ------------------------------------------------------------------------------ Meta's rules


def test_normalisation_follows_meta():
    # Meta: e-mail trimmed and lower-cased; phone digits only, no leading zeros, country code.
    assert normalise_email("  John.Doe@Example.COM ") == "john.doe@example.com"
    assert normalise_email("not an address") is None
    assert normalise_phone("+1 (650) 555-1212") == "16505551212"
    assert normalise_phone("0044 20 7946 0958") == "442079460958"
    # SHA-256 as lower-case hex of the normalised text.
    assert sha(normalise_email(" Joe@EG.com")) == (
        "8830eedd6c6b5ea97d181563a349476ca1bb25ace1f94b5c5e48d9cad727941b"
    )


def test_config_is_checked(monkeypatch):
    good = {"Type": "facebook", "PixelId": "12", "AccessToken": "t", "Events": ["Lead"]}
    assert load_dict({"Notify": [good]}).Notify[0].Events == ["Lead"]
    for bad, key in (
        ({**good, "PixelId": ""}, "PixelId"),
        ({**good, "AccessToken": ""}, "AccessToken"),
        ({**good, "Events": []}, "Events"),
        ({**good, "BatchEvents": 1001}, "BatchEvents"),
        ({**good, "GraphURL": "graph.facebook.com"}, "GraphURL"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_dict({"Notify": [bad]})
    jetstream = {"Type": "nats", "Hosts": ["nats://h:4222"], "JetStream": True}
    with pytest.raises(ConfigError, match="JetStream"):
        load_dict({"Notify": [good, jetstream]})
    # The original's environment variables: pixel and token of the entry, or a new entry.
    monkeypatch.setenv("FB_PIXEL", "987")
    monkeypatch.setenv("FB_TOKEN", "envtoken")
    entry = load_dict({"Notify": [good]}).Notify[0]
    assert (entry.PixelId, entry.AccessToken) == ("987", "envtoken")
    with pytest.raises(ConfigError, match="FB_EVENTS"):
        load_dict({})
    monkeypatch.setenv("FB_EVENTS", "Purchase, Lead")
    (entry,) = load_dict({}).Notify
    assert (entry.Type, entry.PixelId, entry.Events) == ("facebook", "987", ["Purchase", "Lead"])


# ------------------------------------------------------------------------------ a real gateway


def test_listed_events_arrive_once_hashed_with_ip_and_ua_only_under_consent(tmp_path):
    with GraphAPI(PIXEL, TOKEN) as graph:
        with GatewayProcess(tmp_path, facebook(graph, BatchEvents=40)) as gw:
            consented = purchase(email="  Joe@EG.com ", phone="+1 (650) 555-1212")
            no_marketing = purchase(email="joe@eg.com")
            gpc = purchase(email="joe@eg.com")
            lead = {"ename": "lead", "eid": str(uuid.uuid4()), "url": "https://shop.example/"}
            skipped = [
                {"ename": "pageview", "eid": str(uuid.uuid4())},
                {"ename": "purchased", "eid": str(uuid.uuid4())},
            ]
            track(gw, [consented, lead, *skipped], cookie=CONSENT)
            track(gw, [no_marketing], cookie=NO_MARKETING)
            track(gw, [gpc], cookie=CONSENT, headers={"Sec-GPC": "1"})
            # A server event: the visitor's IP and user agent are the ones the backend passes.
            backend = {
                "ename": "lead",
                "eid": str(uuid.uuid4()),
                "cflags": 4096,
                "ip": "198.51.100.9",
                "ua": "Visitor-UA/2",
            }
            assert gw.http("POST", "/tr/v1/str/", json_body=backend).status == 200
            bulk = [purchase() for _ in range(150)]
            for i in range(0, 150, 50):
                track(gw, bulk[i : i + 50], cookie=CONSENT)
            wanted = [consented, lead, no_marketing, gpc, backend, *bulk]
            eids = [e["eid"] for e in wanted]
            graph.wait_for(lambda: len(graph.events) >= len(wanted))
            wait_metric(gw, "sfpl_facebook_events_sent_total", len(wanted))
        assert graph.violations == []
        once_each(graph, eids)
        assert len(graph.events) == len(wanted)  # nothing for pageview / purchased
        assert graph.test_codes == {"TEST123"}
        by_id = {e["event_id"]: e for e in graph.events}

        got = by_id[consented["eid"]]
        assert got["event_name"] == "Purchase" and got["action_source"] == "website"
        assert got["event_source_url"] == "https://shop.example/checkout"
        assert got["custom_data"] == {"value": 19.99, "currency": "USD"}
        user = got["user_data"]
        assert user["em"] == [sha("joe@eg.com")]
        assert user["ph"] == [sha("16505551212")]
        assert user["client_ip_address"] == "203.0.113.7"
        assert user["client_user_agent"] == UA
        assert all(len(h) == 64 for h in user["external_id"])
        assert by_id[lead["eid"]]["event_name"] == "Lead"  # the configured spelling
        user = by_id[backend["eid"]]["user_data"]
        assert (user["client_ip_address"], user["client_user_agent"]) == (
            "198.51.100.9",
            "Visitor-UA/2",
        )

        for eid in (no_marketing["eid"], gpc["eid"]):
            user = by_id[eid]["user_data"]
            assert set(user) == {"external_id"}  # no e-mail, no IP, no user agent
            assert by_id[eid]["opt_out"] is True
        assert by_id[gpc["eid"]]["data_processing_options"] == ["LDU"]
        assert "data_processing_options" not in by_id[no_marketing["eid"]]
        # Batches of at most BatchEvents.
        assert all(n <= 40 for outcome, n in graph.requests if outcome == "ok")


def test_retried_after_429_500_and_timeout_each_event_once(tmp_path):
    with GraphAPI(PIXEL, TOKEN) as graph:
        graph.hold_seconds = 2.5  # longer than the entry's Timeout (1 s)
        graph.script("429", "500", "timeout", "500")
        with GatewayProcess(tmp_path, facebook(graph)) as gw:
            events = [purchase() for _ in range(30)]
            track(gw, events[:10], cookie=CONSENT)
            track(gw, events[10:], cookie=CONSENT)
            eids = [e["eid"] for e in events]
            graph.wait_for(lambda: set(eids) <= set(graph.event_ids()), timeout=45)
            wait_metric(gw, "sfpl_facebook_events_sent_total", len(eids))
            assert metric(gw, "sfpl_facebook_requests_total", outcome="retry") == 4
        assert graph.violations == []
        once_each(graph, eids)
        assert graph.outcomes()[:4] == ["429", "500", "timeout", "500"]


def test_a_restart_never_sends_twice_nor_skips(tmp_path):
    with GraphAPI(PIXEL, TOKEN) as graph:
        cfg = facebook(graph)
        gw = GatewayProcess(tmp_path, cfg)
        first = [purchase() for _ in range(20)]
        with gw:
            track(gw, first, cookie=CONSENT)
            graph.wait_for(lambda: len(graph.events) >= 20)
        # Meta down: accepted events wait; the process is killed with them unsent.
        graph.fail_always("500")
        second = [purchase() for _ in range(25)]
        gw.start()
        try:
            track(gw, second[:10], cookie=CONSENT)
            track(gw, second[10:], cookie=CONSENT)
            graph.wait_for(lambda: graph.outcomes().count("500") >= 2)
        finally:
            gw.kill()
        graph.heal()
        third = [purchase() for _ in range(5)]
        with gw.start():
            track(gw, third, cookie=CONSENT)
            eids = [e["eid"] for e in first + second + third]
            graph.wait_for(lambda: set(eids) <= set(graph.event_ids()), timeout=45)
            gw.stop()
        # A last start finds nothing left to send.
        with gw.start():
            assert metric(gw, "sfpl_facebook_events_pending", pixel=PIXEL) == 0
        assert graph.violations == []
        once_each(graph, eids)
        assert len(graph.events) == len(eids)


def test_an_event_meta_refuses_is_dead_lettered_alone(tmp_path):
    with GraphAPI(PIXEL, TOKEN) as graph:
        events = [purchase() for _ in range(12)]
        bad = events[5]["eid"]
        graph.reject_ids.add(bad)
        with GatewayProcess(tmp_path, facebook(graph)) as gw:
            track(gw, events, cookie=CONSENT)
            good = [e["eid"] for e in events if e["eid"] != bad]
            graph.wait_for(lambda: set(good) <= set(graph.event_ids()))
            dead = gw.workdir / "data" / "facebook" / PIXEL / "deadletter" / "events.jsonl"
            graph.wait_for(dead.exists)
            # The events are in the store whatever Meta says.
            rows = gw.wait_for(
                "SELECT count() AS n FROM sfpla.events", lambda r: r[0]["n"] == len(events)
            )
        assert rows[0]["n"] == len(events)
        once_each(graph, good)
        assert bad not in graph.event_ids()
        (line,) = [json.loads(x) for x in dead.read_text().splitlines()]
        assert line["row"]["event_id"] == bad and "refused" in line["reason"]


def test_memory_durability_sends_too(tmp_path):
    with GraphAPI(PIXEL, TOKEN) as graph:
        with GatewayProcess(tmp_path, {**facebook(graph), "Durability": "memory"}) as gw:
            events = [purchase() for _ in range(7)]
            track(gw, events, cookie=CONSENT)
            graph.wait_for(lambda: len(graph.events) >= 7)
        assert graph.violations == []
        once_each(graph, [e["eid"] for e in events])


def test_the_contract_server_refuses_what_meta_refuses():
    """The fake is only worth its "no violations" if it catches them."""
    good = {
        "event_name": "Lead",
        "event_time": int(time.time()),
        "action_source": "website",
        "event_id": "e1",
        "user_data": {"em": [sha("a@b.c")], "client_user_agent": UA},
    }
    bad_events = [
        {**good, "user_data": {"em": ["a@b.c"]}},  # not hashed
        {**good, "user_data": {"client_ip_address": sha("1.2.3.4")}},  # hashed, must not be
        {**good, "event_time": int(time.time()) - 8 * 86400},  # older than 7 days
        {**good, "action_source": "web"},
        {**good, "event_name": "Purchase"},  # no value/currency
        {**good, "color": "red"},  # unknown key
        {k: v for k, v in good.items() if k != "user_data"},
    ]
    with GraphAPI(PIXEL, TOKEN) as graph:

        def post(path, events, token=TOKEN):
            url = f"{graph.url}{path}?access_token={token}"
            body = json.dumps({"data": events}).encode()
            req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req) as resp:
                    return resp.status
            except urllib.error.HTTPError as e:
                return e.code

        assert post(f"/v22.0/{PIXEL}/events", [good]) == 200
        assert post(f"/v22.0/{PIXEL}/events", [good], token="wrong") == 400
        assert post(f"/{PIXEL}/events", [good]) == 400  # no version
        assert post(f"/v22.0/{PIXEL}/events", []) == 400
        assert post(f"/v22.0/{PIXEL}/events", [good] * 1001) == 400
        for event in bad_events:
            assert post(f"/v22.0/{PIXEL}/events", [good, event]) == 400, event
        assert len(graph.violations) == 4 + len(bad_events)
        assert graph.event_ids() == ["e1"]


# ------------------------------------------------------------------------------ Workers > 1


def test_two_workers_send_every_listed_event_once_across_a_worker_restart(tmp_path):
    """The workers capture, the store process's series loaders fill the one outbox and its one
    sender drains it: a worker restarted while events wait never sends them a second time."""
    with GraphAPI(PIXEL, TOKEN) as graph:
        with GatewayProcess(tmp_path, {**facebook(graph), "Workers": 2}) as gw:
            events = [purchase() for _ in range(40)]
            eids = [e["eid"] for e in events]
            outbox = gw.workdir / "data" / "facebook" / PIXEL
            # Separate connections: both workers take some (each writes its own spool series).
            for i in range(0, 20, 4):
                track(gw, events[i : i + 4], cookie=CONSENT)
            graph.wait_for(lambda: set(eids[:20]) <= set(graph.event_ids()))
            graph.fail_always("500")  # Meta down: the next events wait in the outbox
            for i in range(20, 40, 4):
                track(gw, events[i : i + 4], cookie=CONSENT)

            def all_in_outbox():
                lines = b"".join(p.read_bytes() for p in outbox.glob("outbox-*.jsonl"))
                return all(e.encode() in lines for e in eids)

            graph.wait_for(all_in_outbox)
            victim = process(gw, "w1")["pid"]
            os.kill(victim, signal.SIGKILL)
            wait_until(
                lambda: (
                    process(gw, "w1")["pid"] not in (None, victim)
                    and process(gw, "w1")["status"] == "ok"
                ),
                what="w1 restarted",
            )
            graph.heal()
            graph.wait_for(lambda: set(eids) <= set(graph.event_ids()))
            time.sleep(2)  # a second sender (a worker's) would have posted its copies by now
            # The store process's counters, whichever worker answers the scrape.
            wait_metric(gw, "sfpl_facebook_events_sent_total", len(eids))
            assert metric(gw, "sfpl_facebook_requests_total", outcome="retry") >= 1
        assert graph.violations == []
        once_each(graph, eids)
        assert len(graph.events) == len(eids)


# ------------------------------------------------------------------------------ payments


def test_a_payment_is_sent_once_as_a_purchase_with_value_and_currency(tmp_path):
    with GraphAPI(PIXEL, TOKEN) as graph:
        with GatewayProcess(tmp_path, facebook(graph)) as gw:
            h = {"User-Agent": UA, "X-Forwarded-For": "203.0.113.7", "Cookie": CONSENT}
            eid = str(uuid.uuid4())
            single = {"eid": eid, "uid": str(uuid.uuid4()), "amt": 149.99, "currency": "eur"}
            r = gw.http("POST", "/tr/v1/ltv/", json_body=single, headers=h)
            assert r.status == 200 and len(json.loads(r.body)["ids"]) == 1
            # A batch: each line item is a payment; the one without an amount is not sent.
            items = [{"revenue": 5}, {"total": 7.5, "currency": "GBP"}, {"qty": 1}]
            batch = {"vid": str(uuid.uuid4()), "payments": items}
            r = gw.http("POST", "/tr/v1/ltv/", json_body=batch, headers=h)
            batch_ids = json.loads(r.body)["ids"]
            assert r.status == 200 and len(batch_ids) == 3
            # GET, with an ename that is not listed: stored, not sent.
            r = gw.http("GET", "/tr/v1/ltv/?revenue=3&ename=refund", headers=h)
            assert r.status == 200
            # GET without consent: sent as a Purchase with the hashed vid only.
            query = f"revenue=9.5&currency=SEK&vid={uuid.uuid4()}"
            r = gw.http("GET", f"/tr/v1/ltv/?{query}", headers={"User-Agent": UA})
            get_id = json.loads(r.body)["ids"][0]
            want = [eid, batch_ids[0], batch_ids[1], get_id]
            graph.wait_for(lambda: set(want) <= set(graph.event_ids()))
            wait_metric(gw, "sfpl_facebook_events_sent_total", len(want))
            gw.wait_for("SELECT count() AS n FROM sfpla.payments", lambda r: r[0]["n"] == 6)
        assert graph.violations == []
        once_each(graph, want)
        assert len(graph.events) == len(want)
        by_id = {e["event_id"]: e for e in graph.events}
        got = by_id[eid]
        assert got["event_name"] == "Purchase"
        assert got["custom_data"] == {"value": 149.99, "currency": "EUR"}
        assert got["user_data"]["client_ip_address"] == "203.0.113.7"
        assert got["user_data"]["client_user_agent"] == UA
        assert got["user_data"]["external_id"] == [sha(single["uid"])]  # no vid: the uid
        assert by_id[batch_ids[0]]["custom_data"] == {"value": 5.0, "currency": "USD"}
        assert by_id[batch_ids[1]]["custom_data"] == {"value": 7.5, "currency": "GBP"}
        got = by_id[get_id]
        assert got["custom_data"] == {"value": 9.5, "currency": "SEK"}
        assert got["opt_out"] is True and set(got["user_data"]) == {"external_id"}


def test_replay_marks_are_kept_per_spool_series(tmp_path, monkeypatch):
    """Workers > 1: the store process loads several series into one outbox. Positions of
    different series are not comparable: a worker's replayed frame not yet in the outbox is
    appended (not skipped because another series got further), one already in it is skipped,
    after a restart too."""
    monkeypatch.setattr(facebook_module, "SEGMENT_BYTES", 1)  # a segment per append
    entry = {"Type": "facebook", "PixelId": PIXEL, "AccessToken": TOKEN, "Events": ["Purchase"]}
    cfg = load_dict({"Notify": [entry], "DataDirectory": str(tmp_path)})
    clock = task.Clock()

    def output():
        out = FacebookOutput(cfg.Notify[0], cfg, clock, blocking=defer.maybeDeferred)
        out.outbox.open()
        return out

    def capi(eid):
        return {"ename": "purchase", "event": {"event_id": eid, "event_time": 1}}

    def lines():
        return [
            json.loads(line)["ev"]["event_id"]
            for p in sorted(out.directory.glob("outbox-*.jsonl"))
            for line in p.read_text().splitlines()
        ]

    out = output()
    out.take([(Position(1, 900), False, capi("w1-a"))], "w1")
    out.take([(Position(1, 100), False, capi("w2-a"))], "w2")
    out.take([(Position(1, 50), False, capi("main-a"))])
    # The store process restarts: each loader replays what its series has not committed.
    out = output()
    out.take([(Position(1, 900), True, capi("w1-a")), (Position(1, 950), True, capi("w1-b"))], "w1")
    out.take([(Position(1, 100), True, capi("w2-a")), (Position(1, 300), True, capi("w2-b"))], "w2")
    out.take([(Position(1, 50), True, capi("main-a"))])
    assert lines() == ["w1-a", "w2-a", "main-a", "w1-b", "w2-b"]
    # Once sent, the segments go (all but the newest, w2-b's); the marks stay (sent.json).
    out.outbox.mark_sent(out.outbox.durable)
    assert lines() == ["w2-b"]
    out = output()
    out.take([(Position(1, 950), True, capi("w1-b"))], "w1")
    out.take([(Position(1, 300), True, capi("w2-b"))], "w2")
    out.take([(Position(1, 50), True, capi("main-a")), (Position(1, 60), True, capi("m-b"))])
    assert lines() == ["w2-b", "m-b"]
