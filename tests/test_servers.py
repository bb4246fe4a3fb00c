"""Smoke tests for tests/servers.py: each helper starts a real server that works.

They need the Debian packages from .ci/install-servers.sh; a missing binary is a
test failure, not a skip, so that CI notices a broken install step.
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import socket
import ssl
import threading
import urllib.error
import urllib.request
import uuid

import pytest

try:
    from tests.servers import (
        ClickHouseServer,
        NatsServer,
        Pebble,
        ServerStartError,
        free_port,
        wait_for_port,
    )
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from servers import (
        ClickHouseServer,
        NatsServer,
        Pebble,
        ServerStartError,
        free_port,
        wait_for_port,
    )


# ------------------------------------------------------------------------- utilities


def test_free_port_and_wait_for_port():
    port = free_port()
    assert 1024 < port < 65536
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", port, timeout=0.3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        wait_for_port("127.0.0.1", port, timeout=2)


# ------------------------------------------------------------------------ ClickHouse

EVENTS_DDL = """
CREATE TABLE events (
    event_id   UUID,
    site_id    String,
    name       String,
    url        String,
    visitor    Int64,
    value      Float64,
    ts         DateTime,
    event_date Date
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(event_date)
ORDER BY (site_id, event_date, ts, event_id)
"""


def _event_rows(n: int):
    base = datetime.datetime(2024, 5, 1, 12, 0, 0)
    for i in range(n):
        ts = base + datetime.timedelta(seconds=i * 37)
        yield (
            uuid.uuid4(),
            f"site-{i % 3}",
            "pageview" if i % 5 else "signup",
            f"https://example.test/p/{i % 17}",
            i * 7919,
            i / 3.0,
            ts,
            ts.date(),
        )


def test_clickhouse_insert_kill_restart():
    with ClickHouseServer() as ch:
        assert ch.hostport == f"127.0.0.1:{ch.tcp_port}"
        assert ch.tcp_port != ch.http_port
        client = ch.client()
        assert client.execute("SELECT version()")[0][0].startswith("18.16")
        client.execute(EVENTS_DDL)
        rows = list(_event_rows(1000))
        inserted = client.execute(
            "INSERT INTO events (event_id, site_id, name, url, visitor, value, ts, event_date) VALUES",
            rows,
        )
        assert inserted == 1000
        assert client.execute("SELECT count() FROM events") == [(1000,)]
        assert client.execute("SELECT count() FROM events WHERE name = 'signup'") == [(200,)]
        (sample,) = client.execute("SELECT event_id, ts FROM events WHERE visitor = 7919")
        assert sample == (rows[1][0], rows[1][6])

        # HTTP interface is up too
        with urllib.request.urlopen(
            f"http://127.0.0.1:{ch.http_port}/?query=SELECT+count()+FROM+events", timeout=5
        ) as resp:
            assert resp.read().strip() == b"1000"

        # a crash, then a restart on the same ports and data dir
        client.disconnect()
        port = ch.tcp_port
        assert ch.kill() == -9
        assert not ch.running
        with pytest.raises(Exception):  # noqa: B017 - any connection error
            ch.client(connect_timeout=1).execute("SELECT 1")
        ch.restart()
        assert ch.tcp_port == port
        assert ch.client().execute("SELECT count(), uniqExact(event_id) FROM events") == [
            (1000, 1000)
        ]
        # graceful stop + start keeps data too
        assert ch.stop() == 0
        ch.start()
        assert ch.client().execute("SELECT count() FROM events") == [(1000,)]


def test_clickhouse_sql_dialect_18_16():
    """Pins down what Debian's 18.16 accepts, for whoever writes the schema."""
    with ClickHouseServer() as ch:
        c = ch.client()
        # old-style MergeTree(date, key, granularity) is accepted
        c.execute(
            "CREATE TABLE old_mt (d Date, id UUID, n Int64) ENGINE = MergeTree(d, (d, id), 8192)"
        )
        # ReplacingMergeTree with a version column, new syntax
        c.execute(
            "CREATE TABLE rmt (id UUID, v UInt64, d Date) ENGINE = ReplacingMergeTree(v) "
            "PARTITION BY toYYYYMM(d) ORDER BY id SETTINGS index_granularity = 8192"
        )
        uid = uuid.uuid4()
        day = datetime.date(2024, 5, 1)
        c.execute("INSERT INTO rmt (id, v, d) VALUES", [(uid, 1, day)])
        c.execute("INSERT INTO rmt (id, v, d) VALUES", [(uid, 2, day)])
        assert c.execute("SELECT v FROM rmt FINAL") == [(2,)]
        # plain (non-replicated) MergeTree does not deduplicate identical inserts
        c.execute("INSERT INTO old_mt (d, id, n) VALUES", [(day, uid, 1)])
        c.execute("INSERT INTO old_mt (d, id, n) VALUES", [(day, uid, 1)])
        assert c.execute("SELECT count() FROM old_mt") == [(2,)]
        # things 18.16 does not know
        for ddl in (
            "CREATE TABLE x1 (id UUID, ts DateTime64(3)) ENGINE = MergeTree() ORDER BY id",
            "CREATE TABLE x2 (id UUID, ip IPv4) ENGINE = MergeTree() ORDER BY id",
            "CREATE TABLE x3 (id UUID, m Map(String, String)) ENGINE = MergeTree() ORDER BY id",
            "CREATE TABLE x4 (id UUID, ts DateTime) ENGINE = MergeTree() ORDER BY id "
            "TTL ts + INTERVAL 1 DAY",
            "CREATE TABLE x5 (id UUID, s String CODEC(ZSTD)) ENGINE = MergeTree() ORDER BY id",
            "ALTER TABLE rmt ADD COLUMN IF NOT EXISTS extra String",
            "CREATE TABLE x6 (id UUID, s LowCardinality(String)) ENGINE = MergeTree() ORDER BY id",
        ):
            with pytest.raises(Exception):  # noqa: B017 - ServerException
                c.execute(ddl)
        # insert_deduplicate only works for Replicated*MergeTree, which needs ZooKeeper
        with pytest.raises(Exception, match="without ZooKeeper"):
            c.execute(
                "CREATE TABLE rep (id UUID, d Date) "
                "ENGINE = ReplicatedMergeTree('/clickhouse/tables/01/rep', 'r1') ORDER BY id"
            )
        # LowCardinality exists but is experimental there
        c.execute(
            "CREATE TABLE lc (id UUID, s LowCardinality(String)) ENGINE = MergeTree() ORDER BY id",
            settings={"allow_experimental_low_cardinality_type": 1},
        )


def test_clickhouse_password_user():
    with ClickHouseServer(user="tracker", password="s3cr3t") as ch:
        # 18.16 has no currentUser(); the running query shows its user
        assert ch.client().execute("SELECT user FROM system.processes") == [("tracker",)]
        with pytest.raises(Exception, match="(?i)password"):
            ch.client(password="wrong").execute("SELECT 1")


def test_clickhouse_cluster_distributed():
    with ClickHouseServer(remote_servers_cluster="sfpl", password="pw") as ch:
        c = ch.client()
        assert c.execute("SELECT cluster, host_address, port FROM system.clusters") == [
            ("sfpl", "127.0.0.1", ch.tcp_port)
        ]
        assert dict(c.execute("SELECT macro, substitution FROM system.macros")) == {
            "cluster": "sfpl",
            "shard": "01",
            "replica": "replica01",
        }
        c.execute("CREATE TABLE local (id UInt32, d Date) ENGINE = MergeTree() ORDER BY id")
        c.execute("CREATE TABLE dist AS local ENGINE = Distributed(sfpl, default, local, rand())")
        c.execute(
            "INSERT INTO dist (id, d) VALUES",
            [(i, datetime.date(2024, 5, 1)) for i in range(10)],
            settings={"insert_distributed_sync": 1},
        )
        assert c.execute("SELECT count() FROM dist") == [(10,)]
        assert c.execute("SELECT count() FROM local") == [(10,)]
        # ON CLUSTER needs ZooKeeper on 18.16
        with pytest.raises(Exception, match="DDL background thread is not initialized"):
            c.execute("CREATE TABLE oc ON CLUSTER sfpl (id UInt32) ENGINE = Memory")


def test_clickhouse_startup_failure_reports_log():
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        ch = ClickHouseServer(tcp_port=blocker.getsockname()[1], start_timeout=20)
        try:
            with pytest.raises(ServerStartError) as info:
                ch.start()
            assert "clickhouse-server" in str(info.value)
            assert "Address already in use" in str(info.value)
            assert not ch.running
        finally:
            ch.cleanup()
        assert not ch.dir.exists()


# ------------------------------------------------------------------------------ NATS


def test_nats_pubsub_kill_restart():
    import nats

    async def roundtrip(url: str, subject: str) -> bytes:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            sub = await nc.subscribe(subject)
            await nc.publish(subject, b"hello " + subject.encode())
            msg = await sub.next_msg(timeout=2)
            return msg.data
        finally:
            await nc.close()

    with NatsServer(monitoring=True) as srv:
        assert srv.url == f"nats://127.0.0.1:{srv.port}"
        assert asyncio.run(roundtrip(srv.url, "t.one")) == b"hello t.one"
        with urllib.request.urlopen(f"{srv.monitoring_url}/healthz", timeout=5) as resp:
            assert resp.status == 200
        srv.kill()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
        srv.restart()
        assert asyncio.run(roundtrip(srv.url, "t.two")) == b"hello t.two"


def test_nats_jetstream_dedup_survives_restart():
    import nats

    async def publish_twice(url: str):
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            await js.add_stream(name="EVENTS", subjects=["events.>"])
            hdrs = {"Nats-Msg-Id": "batch-0001"}
            ack1 = await js.publish("events.site1", b"payload", headers=hdrs)
            ack2 = await js.publish("events.site1", b"payload", headers=hdrs)
            info = await js.stream_info("EVENTS")
            return ack1, ack2, info.state.messages
        finally:
            await nc.close()

    async def count(url: str) -> int:
        nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            info = await nc.jetstream().stream_info("EVENTS")
            return info.state.messages
        finally:
            await nc.close()

    with NatsServer(jetstream=True) as srv:
        ack1, ack2, messages = asyncio.run(publish_twice(srv.url))
        assert not ack1.duplicate
        assert ack2.duplicate
        assert ack2.seq == ack1.seq
        assert messages == 1
        srv.kill()
        srv.restart()
        assert asyncio.run(count(srv.url)) == 1
        assert any(srv.store_dir.iterdir())


def test_nats_startup_failure_reports_log():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        srv = NatsServer(port=blocker.getsockname()[1], start_timeout=10)
        try:
            with pytest.raises(ServerStartError, match="address already in use"):
                srv.start()
        finally:
            srv.cleanup()


# ---------------------------------------------------------------------------- Pebble


class _Http01Responder(http.server.BaseHTTPRequestHandler):
    tokens: dict[str, str] = {}

    def do_GET(self):  # noqa: N802
        prefix = "/.well-known/acme-challenge/"
        body = self.tokens.get(self.path[len(prefix) :]) if self.path.startswith(prefix) else None
        if body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_pebble_account_order_and_http01_issuance():
    import josepy as jose
    from acme import challenges, client, crypto_util, messages
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    http_port = free_port()
    responder = http.server.ThreadingHTTPServer(("127.0.0.1", http_port), _Http01Responder)
    threading.Thread(target=responder.serve_forever, daemon=True).start()
    try:
        with Pebble(http_port=http_port) as pebble:
            # Pebble's HTTPS is signed by our generated CA, not by any system CA
            with pytest.raises(urllib.error.URLError) as info:
                urllib.request.urlopen(pebble.directory_url, timeout=5)
            assert isinstance(info.value.reason, ssl.SSLCertVerificationError)

            account_key = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))
            net = client.ClientNetwork(
                account_key, verify_ssl=str(pebble.ca_bundle_path), user_agent="sfpl-tests"
            )
            directory = client.ClientV2.get_directory(pebble.directory_url, net)
            acme = client.ClientV2(directory, net)
            regr = acme.new_account(
                messages.NewRegistration.from_data(
                    email="ops@example.test", terms_of_service_agreed=True
                )
            )
            assert regr.body.status == "valid"

            cert_key = ec.generate_private_key(ec.SECP256R1())
            key_pem = cert_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            csr_pem = crypto_util.make_csr(key_pem, ["test.example"])
            order = acme.new_order(csr_pem)
            assert [i.value for i in order.body.identifiers] == ["test.example"]
            (authz,) = order.authorizations
            # acme>=3 has no TLSALPN01 class: tls-alpn-01 arrives as UnrecognizedChallenge
            kinds = {
                c.chall.jobj.get("type")
                if isinstance(c.chall, challenges.UnrecognizedChallenge)
                else c.chall.typ
                for c in authz.body.challenges
            }
            assert {"http-01", "tls-alpn-01", "dns-01"} <= kinds

            # answer http-01 on pebble.http_port (challtestsrv resolves test.example -> 127.0.0.1)
            chall = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
            response, validation = chall.response_and_validation(account_key)
            _Http01Responder.tokens[chall.chall.encode("token")] = validation
            acme.answer_challenge(chall, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=20)
            order = acme.poll_and_finalize(order, deadline=deadline)

            chain = x509.load_pem_x509_certificates(order.fullchain_pem.encode())
            leaf = chain[0]
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            assert sans.value.get_values_for_type(x509.DNSName) == ["test.example"]
            root = x509.load_pem_x509_certificate(pebble.issuer_root_pem().encode())
            assert chain[-1].issuer == root.subject
            chain[-1].verify_directly_issued_by(root)
            leaf.verify_directly_issued_by(chain[1])
    finally:
        responder.shutdown()
        responder.server_close()
        _Http01Responder.tokens.clear()
