"""Unit tests: the messaging rows (mthreads, mstore, mtriage) of an event with a tid."""

import json
import uuid

import pytest

from sfpltracker.ingest import messaging
from sfpltracker.ingest.messaging import (
    COLUMNS,
    count_events,
    event_records,
    messaging_records,
    schema_columns,
    to_bool,
    to_str_list,
    to_time_ms,
    to_uuid_list,
)
from sfpltracker.store.schema import SCHEMA_DIR
from tests.test_ingest import NOW, row_for

TID, UID, OID, MID, U1, U2 = (str(uuid.uuid4()) for _ in range(6))


def records_for(raw):
    raw = {k.lower(): v for k, v in raw.items()}
    event = row_for(raw)
    return event, dict(messaging_records(raw, event))


# -- the columns -------------------------------------------------------------------------------


def test_the_columns_come_from_the_schema_file():
    # the original's columns (131/44/37) plus the later ones its writer names (reference c.4)
    assert {t: len(c) for t, c in COLUMNS.items()} == {
        "mthreads": 134,
        "mstore": 48,
        "mtriage": 41,
    }
    assert COLUMNS["mstore"]["users"] == "Array(UUID)"
    assert COLUMNS["mthreads"]["cats"] == "Array(String)"
    assert COLUMNS["mthreads"]["abz_start_time"] == "DateTime64(3, 'UTC')"
    assert COLUMNS["mtriage"]["scheduled_local_hour"] == "Int32"
    assert COLUMNS["mstore"]["org"] == "LowCardinality(String)"
    assert set(COLUMNS["mstore"]) - set(COLUMNS["mtriage"]) == set(
        "planned interest perf hide hidden funnel_stage conversion_event_count".split()
    )


def test_columns_copied_from_the_events_row_have_the_events_type():
    events = schema_columns((SCHEMA_DIR / "010_events.sql").read_text())["events"]

    def base(t):
        return t.removeprefix("LowCardinality(").removesuffix(")") if "Low" in t else t

    for table, columns in COLUMNS.items():
        for name in messaging.FROM_EVENT:
            if name in columns:
                assert base(columns[name]) == base(events[name]), (table, name)


# -- one value ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2026-11-18T10:00:00Z", 1_794_996_000_000),
        ("2026-11-18T11:00:00+01:00", 1_794_996_000_000),
        ("2026-11-18 10:00:00", 1_794_996_000_000),
        ("2026-11-18T10:00:00.250Z", 1_794_996_000_250),
        (1_794_996_000, 1_794_996_000_000),
        (1_794_996_000.5, 1_794_996_000_500),
        ("1794996000", 1_794_996_000_000),
        ("tomorrow", None),
        ("", None),
        (True, None),
        ({"at": 1}, None),
        (-5, None),
        (10**12, None),  # epoch seconds in the year 33658: dropped, not wrapped
        (float("nan"), None),
    ],
)
def test_times(value, expected):
    assert to_time_ms(value) == expected


def test_booleans_and_arrays():
    assert [to_bool(v) for v in (True, False, 1, 0, "true", "FALSE", "1", "0")] == [
        True,
        False,
        True,
        False,
        True,
        False,
        True,
        False,
    ]
    assert [to_bool(v) for v in ("yes", 2, None, [], 1.0)] == [None] * 5
    assert to_uuid_list([U1, U2.upper()]) == [U1, U2]
    assert to_uuid_list(json.dumps([U1])) == [U1]  # a GET value is the array's text
    assert to_uuid_list([U1, "x"]) is None  # one bad element drops the field
    assert to_uuid_list("x") is None and to_uuid_list(U1) is None
    assert to_uuid_list([]) == []
    assert to_str_list(["email", "sms", 3]) == ["email", "sms", "3"]
    assert to_str_list(["email", {"a": 1}]) is None
    assert to_str_list("email") is None


# -- the rows ----------------------------------------------------------------------------------


def test_a_tid_event_writes_one_row_per_table():
    event, rows = records_for(
        {
            "tid": TID,
            "uid": UID,
            "oid": OID,
            "org": "acme",
            "ename": "Message_Sent",
            "subject": "Hello",
            "msg": "Welcome aboard",
            "urgency": "3",
            "sys": "true",
            "users": [U1, U2],
            "mtypes": ["email", "sms"],
            "cats": ["news"],
            "admins": [U1],
            "repl": {"name": "Ada", "n": 2},
            "splits": '{"a": 0.5}',
            "data": {"k": [1, 2]},
            "scheduled": "2026-11-18 10:00:00",
            "abz_start_time": 1_794_996_000,
            "provider_cost": "1.25",
            "planned_impressions": 1000,
            "ephemeral": 60,
            "alias": "user1:user2",
            "scheduled_local_hour": 9,
        }
    )
    assert set(rows) == {"mthreads", "mstore", "mtriage"}
    thread, store, triage = rows["mthreads"], rows["mstore"], rows["mtriage"]
    for row in (thread, store, triage):
        assert row["tid"] == TID and row["uid"] == UID and row["oid"] == OID
        assert row["org"] == "acme" and row["vid"] == event["vid"]
        assert row["created_at"] == row["updated_at"] == NOW == event["created_at"]
    assert thread["ename"] == "message_sent"  # normalised as in events
    assert thread["sys"] is True and thread["urgency"] == 3
    assert thread["cats"] == ["news"] and thread["admins"] == [U1]
    assert thread["mtypes"] == ["email", "sms"]
    assert json.loads(thread["splits"]) == {"a": 0.5}
    assert thread["abz_start_time"] == 1_794_996_000_000
    assert thread["provider_cost"] == 1.25 and thread["planned_impressions"] == 1000
    assert thread["ephemeral"] == 60 and thread["alias"] == "user1:user2"
    assert "subject" not in thread and "users" not in thread  # not mthreads columns
    for row in (store, triage):
        assert row["mid"] == event["eid"]  # no mid sent: the event's eid
        assert row["subject"] == "Hello" and row["msg"] == "Welcome aboard"
        assert row["urgency"] == 3 and row["sys"] is True
        assert row["users"] == [U1, U2] and row["mtypes"] == ["email", "sms"]
        assert json.loads(row["repl"]) == {"name": "Ada", "n": 2}
        assert json.loads(row["data"]) == {"k": [1, 2]}  # String column: the object as JSON text
        assert row["scheduled"] == 1_794_996_000_000
        assert row["createdms"] == NOW
        assert row["scheduled_local_hour"] == 9 and row["scheduled_local_dow"] == -1
    assert "keep" not in store and triage["keep"] is True


def test_defaults_and_badly_typed_fields_are_dropped_alone():
    event, rows = records_for(
        {
            "tid": TID,
            "urgency": "high",
            "users": "x",
            "mtypes": "email",
            "sys": "maybe",
            "repl": [1, 2],
            "scheduled": "next week",
            "keep": "false",
            "subject": "Still stored",
            "meta": {"ok": True},
            "ephemeral": 2**40,  # beyond Int32
        }
    )
    store, triage = rows["mstore"], rows["mtriage"]
    for row in (store, triage):
        for column in ("users", "mtypes", "sys", "repl", "scheduled"):
            assert column not in row
        assert row["subject"] == "Still stored"
        assert json.loads(row["meta"]) == {"ok": True}
    assert "urgency" not in store and triage["urgency"] == 8  # the original's triage default
    assert triage["keep"] is False  # sent: not defaulted
    assert "ephemeral" not in rows["mthreads"] and "urgency" not in rows["mthreads"]
    assert event["tid"] == TID  # the event itself is unharmed


def test_the_client_mid_is_the_message_key_and_the_gateway_sets_the_times():
    _, rows = records_for(
        {"tid": TID, "mid": MID.upper(), "created_at": "2001-01-01", "updated_at": 5}
    )
    assert rows["mstore"]["mid"] == rows["mtriage"]["mid"] == MID
    for row in rows.values():
        assert row["created_at"] == row["updated_at"] == NOW
    _, rows = records_for({"tid": TID, "mid": "not-a-uuid"})
    assert rows["mstore"]["mid"] != "not-a-uuid" and uuid.UUID(rows["mstore"]["mid"])


def test_identity_follows_the_events_row():
    # a bad uid is dropped from events, so from the messaging rows too
    event, rows = records_for({"tid": TID, "uid": "nobody", "vid": "also-bad", "ver": "2"})
    assert "uid" not in event
    for row in rows.values():
        assert "uid" not in row and row["vid"] == event["vid"]
    assert rows["mthreads"]["ver"] == 2


def test_the_same_event_builds_the_same_rows():
    # no clock, no random id: a record rebuilt from the same event is the same row
    raw = {"tid": TID, "subject": "s", "users": [U1], "repl": {"b": 1, "a": 2}}
    event = row_for(raw)
    assert messaging_records(raw, event) == messaging_records(dict(raw), dict(event))


def test_no_rows_without_a_valid_tid():
    for raw in ({"ename": "x"}, {"tid": "not-a-uuid"}, {"tid": str(uuid.UUID(int=0))}):
        event, rows = records_for(raw)
        assert rows == {}
        assert event_records(raw, event) == [("events", event)]
    event = row_for({"tid": TID})
    records = event_records({"tid": TID}, event)
    assert [t for t, _ in records] == ["events", "mthreads", "mstore", "mtriage"]
    assert count_events(records) == 1


def test_in_a_cluster_a_thread_lives_on_one_shard():
    from sfpltracker.store.clickhouse.cluster import cluster_statements
    from sfpltracker.store.schema import load_statements

    sql = {s.name: s.sql for s in cluster_statements(load_statements(), "c1")}
    for table in ("mthreads", "mstore", "mtriage"):
        assert "ReplicatedReplacingMergeTree" in sql[f"{table}_local"]
        assert sql[table].rstrip().endswith("cityHash64(tid))"), sql[table]
