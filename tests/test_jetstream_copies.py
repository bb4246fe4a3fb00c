"""Two copies of one JetStream message in one fetch, made on a real ``nats-server``.

nats-py's ``fetch`` first hands out what waits in its subscription's queue: messages that came
for an earlier pull after that fetch had returned. When the next fetch comes after AckWait
(the loader waited for room, or for the store), JetStream has meanwhile delivered those
messages again, and that fetch holds both copies (``fetch`` itself does it when a fetch times
out before its pull's messages came and the next one is later than AckWait; the likely cause
of a CI run where ``visitors`` counted one event twice after a store-process kill). Here the
two pulls are sent by hand on one inbox, so both copies exist for certain; the loader's
``one_per_message`` must load each message once, as possibly stored, and ack every copy.
"""

from __future__ import annotations

import asyncio
import json

from sfpltracker.notify.nats_client import MSG_ID_HEADER, TABLE_HEADER
from sfpltracker.pipeline.jetstream import one_per_message
from tests.servers import NatsServer

ACK_WAIT = 1.0


async def pull(nc, sub, batch: int) -> list:
    await nc.publish(
        "$JS.API.CONSUMER.MSG.NEXT.S.loader",
        json.dumps({"batch": batch}).encode(),
        reply=sub.subject,
    )
    return [await sub.next_msg(timeout=5) for _ in range(batch)]


async def two_copies_of_each(url: str, n: int):
    """Publish n messages, pull them (first copies), let AckWait pass, pull them again."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="S", subjects=["s"]))
    await js.add_consumer(
        "S", ConsumerConfig(durable_name="loader", ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT)
    )
    for i in range(n):
        payload = json.dumps({"eid": f"e{i}", "n": i}).encode()
        await js.publish("s", payload, headers={MSG_ID_HEADER: f"e{i}"})
    # and one a publisher sent without a key (its copies share only the stream sequence)
    await js.publish("s", b'{"id": "p", "n": 99}', headers={TABLE_HEADER: "payments"})
    sub = await nc.subscribe(nc.new_inbox())
    first = await pull(nc, sub, n + 1)
    await asyncio.sleep(ACK_WAIT + 0.5)
    again = await pull(nc, sub, n + 1)
    return nc, js, first, again


async def pending_after_acking(js, msgs, expected: int) -> int:
    """Messages still unacked once the acks were taken (the server applies them apart from
    the requests on the connection: waited for, up to 10 s, until ``expected``)."""
    for msg in msgs:
        await msg.ack()
    for _ in range(100):
        info = await js.consumer_info("S", "loader")
        pending = info.num_ack_pending + info.num_pending
        if pending == expected:
            break
        await asyncio.sleep(0.1)
    return pending


def test_a_fetch_holding_two_copies_loads_each_message_once_and_acks_both(tmp_path):
    async def scenario(url: str):
        nc, js, first, again = await two_copies_of_each(url, 10)
        try:
            assert [m.metadata.num_delivered for m in first] == [1] * 11
            assert [m.metadata.num_delivered for m in again] == [2] * 11
            fetched, poison = one_per_message(first + again, in_flight={"e3"}, stored_before=0)
            assert poison == []
            # e3 waits for the store in another batch: its copies are left to that batch.
            keys = [f"e{i}" for i in range(10) if i != 3]
            assert [item.key for item in fetched] == [*keys, ""]
            assert [item.row["n"] for item in fetched] == [i for i in range(10) if i != 3] + [99]
            assert all(len(item.copies) == 2 and item.maybe_stored for item in fetched)
            assert [item.table for item in fetched] == ["events"] * 9 + ["payments"]
            # Acking every copy settles every message but the one left to its batch.
            copies = [m for item in fetched for m in item.copies]
            assert await pending_after_acking(js, copies, expected=1) == 1
        finally:
            await nc.close()

    with NatsServer(jetstream=True, base_dir=tmp_path / "nats") as server:
        asyncio.run(scenario(server.url))


def test_first_deliveries_of_new_messages_alone_are_loaded_without_dedup(tmp_path):
    async def scenario(url: str):
        import nats

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

            await js.add_stream(StreamConfig(name="S", subjects=["s"]))
            await js.add_consumer(
                "S", ConsumerConfig(durable_name="loader", ack_policy=AckPolicy.EXPLICIT)
            )
            await js.publish("s", b'{"eid": "a"}', headers={MSG_ID_HEADER: "a"})
            await js.publish("s", b"not json", headers={MSG_ID_HEADER: "b"})
            await js.publish("s", b'{"id": "c"}', headers={TABLE_HEADER: "payments"})
            sub = await nc.subscribe(nc.new_inbox())
            messages = await pull(nc, sub, 3)
            fetched, poison = one_per_message(messages, in_flight=set(), stored_before=0)
            assert [(i.key, i.table, i.maybe_stored, len(i.copies)) for i in fetched] == [
                ("a", "events", False, 1),
                ("", "payments", False, 1),
            ]
            assert [m.data for m in poison] == [b"not json"]
            # In the stream (sequence 1) when the loader subscribed: maybe stored by an earlier
            # consumer although JetStream delivers it for the first time.
            fetched, _ = one_per_message(messages, in_flight=set(), stored_before=1)
            assert [(i.key, i.maybe_stored) for i in fetched] == [("a", True), ("", False)]
        finally:
            await nc.close()

    with NatsServer(jetstream=True, base_dir=tmp_path / "nats") as server:
        asyncio.run(scenario(server.url))
