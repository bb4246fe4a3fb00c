"""The seed README's end-to-end flow through a real gateway process."""

import uuid


def test_seed_end_to_end_flow(gateway):
    vid, uid, oid = (str(uuid.uuid4()) for _ in range(3))
    r = gateway.http(
        "POST",
        "/tr/v1/tr/",
        json_body={
            "vid": vid,
            "ename": "page_view",
            "etyp": "view",
            "url": "https://example.com/a",
            "last": "https://google.com/",
        },
    )
    assert r.status == 200, r
    r = gateway.http(
        "POST",
        "/tr/v1/str/",
        json_body={"vid": vid, "uid": uid, "oid": oid, "ename": "signup", "etyp": "conversion"},
    )
    assert r.status == 200 and r.header("content-type") == "application/json"
    signup_eid = r.json()
    assert uuid.UUID(signup_eid)
    r = gateway.http(
        "POST", "/tr/v1/ltv/", json_body={"vid": vid, "uid": uid, "oid": oid, "amt": 149.99}
    )
    assert r.status == 200, r

    events = gateway.wait_for(
        f"SELECT toString(eid) AS eid, ename, etyp, toString(uid) AS uid, toString(oid) AS oid, "
        f"server FROM sfpla.events FINAL WHERE vid = '{vid}' ORDER BY created_at",
        lambda rows: len(rows) == 2,
    )
    assert [e["ename"] for e in events] == ["page_view", "signup"]
    assert events[1]["eid"] == signup_eid
    assert events[1]["uid"] == uid and events[1]["oid"] == oid
    assert [e["server"] for e in events] == [0, 1]

    payments = gateway.wait_for(
        f"SELECT revenue, toString(uid) AS uid, currency FROM sfpla.payments FINAL "
        f"WHERE vid = '{vid}'",
        lambda rows: len(rows) == 1,
    )
    assert payments == [{"revenue": 149.99, "uid": uid, "currency": "USD"}]
    ltv = gateway.wait_for(
        f"SELECT id_type, sum(paid) AS paid FROM sfpla.ltv WHERE id IN ('{uid}', '{vid}') "
        "GROUP BY id_type ORDER BY id_type",
        lambda rows: len(rows) == 2,
    )
    assert ltv == [{"id_type": "uid", "paid": 149.99}, {"id_type": "vid", "paid": 149.99}]

    # A view's part is committed just after its source's: poll rather than read once.
    hits = gateway.wait_for(
        "SELECT url, sum(total) AS n FROM sfpla.hits GROUP BY url", lambda rows: len(rows) == 1
    )
    assert hits == [{"url": "https://example.com/a", "n": 1}]
    referrers = gateway.wait_for(
        "SELECT url, sum(total) AS n FROM sfpla.referrers GROUP BY url", lambda rows: len(rows) == 1
    )
    assert referrers == [{"url": "https://google.com/", "n": 1}]
    dailies = gateway.wait_for(
        "SELECT ip, sum(total) AS n FROM sfpla.dailies GROUP BY ip", lambda rows: len(rows) == 1
    )
    assert dailies == [{"ip": "127.0.0.0", "n": 1}]
