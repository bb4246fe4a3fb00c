"""``python -m sfpltracker deadletter list | replay``: dead letters listed, fixed and replayed.

Real gateway processes on the embedded chDB store; dead letters are produced as in
``test_poison.py`` (a spooled frame from an older gateway with params chDB refuses). The
replay runs inside the running gateway (admin channel) and offline (the CLI opens the store).
The file's rewrite is also checked against appends racing it, on the real ``DeadLetters``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from sfpltracker.pipeline.spool import encode_frame, list_segments, segment_path
from sfpltracker.store.deadletter import DeadLetters
from sfpltracker.store.deadletter_replay import fingerprint, parse, replay, unique_rows
from sfpltracker.store.embedded.store import EmbeddedStore
from tests.test_durability import TRACK, assert_exactly_once, drained, wait_health
from tests.test_poison import CLASHING_PATHS_PARAMS, LONE_SURROGATE_PARAMS, event_row
from tests.test_privacy_cli import cli


def dead_file(gw) -> Path:
    return Path(gw.config["DataDirectory"]) / "deadletter" / "events.jsonl"


def entries(gw) -> list[dict]:
    return [json.loads(line) for line in dead_file(gw).read_text().splitlines() if line.strip()]


def write_entries(gw, items: list[dict]) -> None:
    dead_file(gw).write_text("".join(json.dumps(e) + "\n" for e in items))


def count_eid(gw, eid: str) -> int:
    return gw.query(f"SELECT count() AS n FROM sfpla.events WHERE eid = '{eid}'")[0]["n"]


def test_dead_letters_are_listed_fixed_and_replayed_exactly_once(gateway_factory):
    slow = {"Batching": {"events": {"Strategy": "time", "MaxBatchTime": "10m"}}}
    gw = gateway_factory(slow)
    acked = []
    for n in range(3):
        eid = str(uuid.uuid4())
        assert gw.http("POST", TRACK, json_body={"eid": eid, "ename": f"e{n}"}).status == 200
        acked.append(eid)
    gw.kill()
    series = Path(gw.config["DataDirectory"]) / "spool" / "main"
    good, bad, clash = (str(uuid.uuid4()) for _ in range(3))
    records = [
        ["events", event_row(good, 0)],
        ["events", event_row(bad, 1, LONE_SURROGATE_PARAMS)],
        ["events", event_row(clash, 2, CLASHING_PATHS_PARAMS)],
    ]
    with open(segment_path(series, list_segments(series)[-1]), "ab") as f:
        f.write(encode_frame(records, int(time.time() * 1000)))
    gw.config.pop("Batching")
    gw.start()
    wait_health(gw, drained)
    assert {e["row"]["eid"] for e in entries(gw)} == {bad, clash}
    # A batch resent after a crash is searched again: its refused rows are in the file twice.
    first = {e["row"]["eid"]: e for e in entries(gw)}
    with dead_file(gw).open("a") as f:
        f.write(json.dumps(first[bad]) + "\n")

    listed = cli(gw, "deadletter", "list").stdout
    assert "events: 3 row(s) (2 unique)" in listed, listed
    lines = listed.splitlines()
    assert any(ln.split()[0] == "2" and "Cannot parse JSON object" in ln for ln in lines), listed
    assert any(ln.split()[0] == "1" and "Duplicate path" in ln for ln in lines), listed
    assert first[bad]["time"][:19] in listed  # the oldest time
    summary = json.loads(cli(gw, "deadletter", "list", "--table", "events", "--json").stdout)
    assert [s["rows"] for s in summary] == [3]
    assert cli(gw, "deadletter", "list", "--table", "payments").stdout.startswith("no dead")

    # nothing fixed yet: a dry run counts and changes nothing
    before = dead_file(gw).read_bytes()
    dry = cli(gw, "deadletter", "replay", "--table", "events", "--dry-run").stdout
    assert "3 row(s), 1 duplicate(s) in the file, 0 already stored, 2 would be inserted" in dry
    assert dead_file(gw).read_bytes() == before
    assert count_eid(gw, bad) == 0

    # the operator fixes the row (every copy of it) and replays
    fixed = [
        dict(e, row=dict(e["row"], params="{}")) if e["row"]["eid"] == bad else e
        for e in entries(gw)
    ]
    write_entries(gw, fixed)
    before = dead_file(gw).read_bytes()
    cli(gw, "deadletter", "replay", "--table", "events", "--dry-run")
    assert dead_file(gw).read_bytes() == before
    assert count_eid(gw, bad) == 0

    done = cli(gw, "deadletter", "replay", "--table", "events").stdout
    assert "replayed 1 row(s) of events; still refused 1" in done, done
    assert "duplicates skipped 1 (1 in the file, 0 already stored)" in done, done
    assert count_eid(gw, bad) == 1
    assert_exactly_once(gw, [*acked, good, bad])  # hits, visitors ... count it once
    left = entries(gw)
    assert [e["row"]["eid"] for e in left] == [clash]
    assert "Duplicate path" in left[0]["reason"] and left[0]["time"] > first[clash]["time"]
    assert left[0]["row"] == first[clash]["row"]

    # replayed again: the refused row is tried again, nothing is inserted twice
    again = cli(gw, "deadletter", "replay", "--table", "events").stdout
    assert "replayed 0 row(s) of events; still refused 1" in again, again
    assert count_eid(gw, bad) == 1
    assert [e["row"]["eid"] for e in entries(gw)] == [clash]

    done = cli(gw, "deadletter", "replay", "--table", "../secret", check=False)
    assert done.returncode == 1 and "bad table name" in done.stderr, done
    done = cli(gw, "deadletter", "replay", "--table", "payments", check=False)
    assert done.returncode == 1 and "no dead letters for payments" in done.stderr, done

    # offline: no gateway runs, the CLI opens the store itself
    gw.stop()
    write_entries(gw, [dict(e, row=dict(e["row"], params='{"a":{"b":2}}')) for e in entries(gw)])
    offline = cli(gw, "deadletter", "replay", "--table", "events").stdout
    assert "replayed 1 row(s) of events; still refused 0" in offline, offline
    assert entries(gw) == []
    assert cli(gw, "deadletter", "list").stdout.startswith("events: 0 row(s)")
    gw.start()
    assert count_eid(gw, clash) == 1
    assert_exactly_once(gw, [*acked, good, bad, clash])

    # copies of replayed rows come back (a batch resent after a crash): skipped as stored
    fixed_clash = dict(first[clash], row=dict(first[clash]["row"], params="{}"))
    write_entries(gw, [next(e for e in fixed if e["row"]["eid"] == bad), fixed_clash])
    dry = cli(gw, "deadletter", "replay", "--table", "events", "--dry-run").stdout
    assert "2 already stored, 0 would be inserted" in dry, dry
    resent = cli(gw, "deadletter", "replay", "--table", "events").stdout
    assert "replayed 0 row(s) of events; still refused 0" in resent, resent
    assert "(0 in the file, 2 already stored)" in resent, resent
    assert entries(gw) == []
    assert_exactly_once(gw, [*acked, good, bad, clash])


# -- the file under concurrent appends (real chDB store, no gateway) -------------------------


def dead_entry(row: dict, reason: str = "old") -> dict:
    return {"time": "2026-01-01T00:00:00.000Z", "table": "events", "reason": reason, "code": 117,
            "server": "embedded", "row": row}  # fmt: skip


def test_appends_during_the_rewrite_are_kept():
    """What the store appends between the snapshot and the rewrite survives it."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        letters = DeadLetters(Path(tmp))
        rows = [event_row(str(uuid.uuid4()), n) for n in range(3)]
        letters.append("events", [(rows[0], "r0", 117), (rows[1], "r1", 117)])
        head = letters.snapshot("events")
        parsed = parse(head + b"not json\n")
        assert len(parsed.entries) == 2 and parsed.unreadable == [b"not json\n"]
        # appends race the rewrite from other threads: each one is either before the rename
        # (kept as the tail) or after it
        racers = [
            threading.Thread(target=letters.append, args=("events", [(rows[2], f"r{n}", 6)]))
            for n in range(20)
        ]
        for t in racers:
            t.start()
        tail = letters.replace_head("events", len(head), [head.splitlines(keepends=True)[1]])
        for t in racers:
            t.join()
        left = letters.read("events")
        assert left[0]["row"] == rows[1]
        assert len(left) == 21 and all(e["row"] == rows[2] for e in left[1:])
        assert len(parse(tail).entries) <= 20


@pytest_twisted.inlineCallbacks
def test_replay_on_the_store_dedupes_by_key_and_keeps_the_refused(tmp_path):
    store = EmbeddedStore(tmp_path, reactor)
    yield store.start()
    try:
        ok = event_row(str(uuid.uuid4()), 1)
        refused = event_row(str(uuid.uuid4()), 2, CLASHING_PATHS_PARAMS)
        upper = dict(ok, eid=ok["eid"].upper())  # the same key, spelled otherwise
        lines = [dead_entry(ok), dead_entry(upper), dead_entry(refused)]
        path = store.deadletters.path("events")
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps(e) + "\n" for e in lines) + "{broken\n")
        parsed = parse(path.read_bytes())
        assert fingerprint("events", ok) == fingerprint("events", upper)
        assert list(unique_rows("events", parsed).values()) == [ok, refused]

        dry = yield replay(store, "events", dry_run=True)
        assert dry == {"table": "events", "rows": 3, "duplicates_in_file": 1, "unreadable": 1,
                       "already_stored": 0, "dry_run": True, "to_insert": 2}  # fmt: skip
        result = yield replay(store, "events")
        assert (result["replayed"], result["still_refused"], result["already_stored"]) == (1, 1, 0)
        kept = path.read_text().splitlines()
        assert kept[0] == "{broken"  # an unreadable line is left for the operator
        assert [json.loads(k)["row"]["eid"] for k in kept[1:]] == [refused["eid"]]
        assert "Duplicate path" in json.loads(kept[1])["reason"]
        out = yield store.execute("SELECT count() FROM sfpla.events")
        assert out.decode().strip() == "1"
    finally:
        yield store.stop()
