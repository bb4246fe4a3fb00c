"""The query listener runs only what ClickHouse's own parser says is a read of the tracker's data.

Every probe of issue 12 (each one got through the regular-expression guard of 9659b6f) is sent
to a real gateway's query listener, with the embedded store; the ones that would reach the
network point at a TCP listener of the test's own, which must see no connection. The queries
clients really send (clickhouse-connect, Grafana, the CLI) still run. The same guard then
runs in front of a real ClickHouse server store (18.16).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import clickhouse_connect
import pytest

from sfpltracker.store.query_guard import SYSTEM_TABLES
from tests.clickhouse_legacy import downgrade_schema
from tests.gateway_process import ROOT, GatewayProcess
from tests.servers import ClickHouseServer


class ConnectionCounter:
    """A TCP listener on 127.0.0.1 that accepts and counts connections (and closes them)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with GatewayProcess(tmp_path_factory.mktemp("queryguard")) as gateway:
        r = gateway.http(
            "POST", "/tr/v1/str/", json_body=[{"ename": "guard_a"}, {"ename": "guard_b"}]
        )
        assert r.status == 200, r
        gateway.wait_for("SELECT count() AS n FROM sfpla.events", lambda rows: rows[0]["n"] == 2)
        yield gateway


@pytest.fixture
def counter():
    c = ConnectionCounter()
    yield c
    c.close()


def refused(r) -> bool:
    return r.status == 403 and r.header("x-clickhouse-exception-code") == "164"


# -- reading host files --------------------------------------------------------------------


def test_the_file_function_cannot_read_a_secret_or_any_file(gw):
    token_path = gw.workdir / "data" / "secret.key"
    token = token_path.read_text().strip()
    assert token
    for sql in (
        f"SELECT file('{token_path}')",
        f"SELECT FILE('{token_path}') FORMAT TSVRaw",
        "SELECT file('/etc/passwd')",
        f"SELECT * APPLY file FROM (SELECT '{token_path}' AS p)",
        f"SELECT * FROM (SELECT `file`('{token_path}'))",
    ):
        r = gw.query_raw(sql, "TSVRaw")
        assert token.encode() not in r.body and b"root:" not in r.body, (sql, r)
        assert refused(r), (sql, r)
        assert b"function file is not allowed" in r.body.replace(b"FILE", b"file")


def test_describe_of_a_file_table_function_is_refused(gw):
    r = gw.query_raw("DESCRIBE file('/etc/passwd', 'TSVWithNames')", "TSV")
    assert b"root:" not in r.body, r
    assert refused(r) and b"table functions are not allowed" in r.body, r


# -- writing host files --------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "SELECT 1 # '\nINTO OUTFILE '{path}' --'",
        "SELECT 1 #! '\nINTO OUTFILE '{path}' --'",
        "SELECT $$'$$ INTO OUTFILE '{path}' --'",
        "SELECT 1 INTO OUTFILE '{path}'",
    ],
    ids=["hash-comment", "shebang-comment", "heredoc", "plain"],
)
def test_into_outfile_is_refused_however_it_is_hidden(gw, tmp_path, template):
    path = tmp_path / "written"
    r = gw.query_raw(template.format(path=path), "TSV")
    assert not path.exists(), r
    assert refused(r), r
    assert b"INTO OUTFILE is not allowed" in r.body


def test_the_database_parameter_must_name_an_allowed_database(gw, tmp_path):
    path = tmp_path / "written"
    for database in (f"default`; SELECT 1 INTO OUTFILE '{path}'; --", "system", "default"):
        r = gw.query_raw("SELECT 1", "TSV", database=database)
        assert not path.exists(), (database, r)
        assert refused(r), (database, r)
        assert b"is not readable here" in r.body
    r = gw.query_raw("SELECT count() AS n FROM events", database="sfpla")
    assert (r.status, json.loads(r.body)) == (200, {"n": 2})


# -- reaching the network ------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "DESCRIBE url('http://127.0.0.1:{port}/x', 'CSVWithNames')",
        "SELECT * FROM url('http://127.0.0.1:{port}/x', 'CSVWithNames')",
        "DESCRIBE s3('http://127.0.0.1:{port}/bucket/x.csv', 'CSVWithNames')",
        "DESCRIBE remote('127.0.0.1:{port}', system.one)",
        "SELECT * FROM sfpla.events WHERE ename IN (SELECT * FROM remote('127.0.0.1:{port}', system.one))",
    ],
    ids=["describe-url", "select-url", "describe-s3", "describe-remote", "remote-in-subquery"],
)
def test_table_functions_make_no_connection(gw, counter, template):
    r = gw.query_raw(template.format(port=counter.port), "TSV")
    time.sleep(0.3)  # a connection the store made would have been accepted by now
    assert counter.accepted == 0, r
    assert refused(r), r
    assert b"table functions are not allowed" in r.body


# -- one statement -------------------------------------------------------------------------


def test_functions_telling_of_the_host_are_refused(gw):
    # Was 200: the data directory's path (where secret.key is), the kernel's version, disks.
    data = str(gw.workdir / "data")
    for sql in (
        "SELECT getServerSetting('path')",
        "SELECT GETSERVERSETTING('path')",
        "SELECT getOSKernelVersion()",
        "SELECT filesystemAvailable(), filesystemCapacity(), filesystemUnreserved()",
        "SELECT * APPLY getServerSetting FROM (SELECT 'path' AS p)",
        "SELECT hostName()",
        "SELECT FQDN()",
        "SELECT fullHostName()",
        "SELECT displayName()",
    ):
        r = gw.query_raw(sql, "TSV")
        assert data.encode() not in r.body and b"Linux" not in r.body, (sql, r)
        assert r.body.strip() != socket.gethostname().encode(), (sql, r)
        assert refused(r) and b"is not allowed" in r.body, (sql, r)
    # A query setting is not the host's: still answered.
    assert gw.query_raw("SELECT getSetting('max_threads') > 0", "TSV").body == b"1\n"


def test_system_tables_do_not_show_the_hosts_paths(gw):
    # Was 200 with the data directory (where secret.key is) in data_paths / data_path /
    # metadata_path of system.tables and system.databases.
    data = str(gw.workdir / "data").encode()
    for sql in (
        "SELECT * FROM system.tables",
        "SELECT * FROM system.databases",
        "SELECT data_paths FROM system.tables",
        "SELECT arrayJoin(data_paths) AS p FROM system.tables WHERE database = 'sfpla'",
        "SELECT t.metadata_path FROM system.tables AS t",
        "SELECT system.databases.data_path FROM system.databases",
        "SELECT `data_path` AS p FROM system.databases",
        "SELECT name FROM system.tables WHERE has(data_paths, '/')",
        "SELECT tables.* FROM system.tables",
        "SELECT COLUMNS('path') FROM system.databases",
        "SELECT * EXCEPT (name) FROM system.databases",
        "SELECT x.3 FROM (SELECT tuple(*) AS x FROM system.databases)",
        "SELECT name FROM sfpla.events AS e JOIN system.tables AS t ON 1 = 1 WHERE e.* != ''",
        "SELECT 1 WHERE ('sfpla', 'Atomic', '/', '', '', '', '', 0) IN system.databases",
    ):
        r = gw.query_raw(sql, "TSV")
        assert data not in r.body, (sql, r)
        assert refused(r), (sql, r)
        assert b"not readable" in r.body or b"is not allowed on system." in r.body, (sql, r)
    # The tables that are all host configuration stay refused as a whole.
    for table in ("parts", "disks", "detached_parts", "macros", "build_options",
                  "server_settings", "storage_policies", "filesystem_cache"):  # fmt: skip
        r = gw.query_raw(f"SELECT * FROM system.{table}", "TSV")
        assert refused(r) and f"system.{table} is not readable".encode() in r.body, (table, r)
    # What a schema browser reads is still answered.
    names = gw.query("SELECT name, engine FROM system.tables WHERE database = 'sfpla'")
    assert {"name": "events", "engine": "ReplacingMergeTree"} in names
    assert {"name": "sfpla"} in gw.query("SELECT name FROM system.databases")
    assert gw.query_raw("DESCRIBE TABLE system.tables", "TSV").body.startswith(b"database\t")
    assert gw.query_raw("EXISTS TABLE system.databases", "TSV").body == b"1\n"


def test_no_readable_system_table_or_view_shows_the_data_directory(gw):
    # Every table of the allow-list, and every information_schema view, read whole.
    data = str(gw.workdir / "data").encode()
    views = gw.query(
        "SELECT table_name AS t FROM information_schema.tables "
        "WHERE table_schema = 'information_schema'"
    )
    assert len(views) > 3
    tables = [f"system.{t}" for t in SYSTEM_TABLES] + [
        f"information_schema.{v['t']}" for v in views
    ]
    answered = 0
    for table in tables:
        r = gw.query_raw(f"SELECT * FROM {table}", "TSV")
        assert data not in r.body, (table, r)
        assert r.status == 200 or refused(r), (table, r)
        answered += r.status == 200
    assert answered >= len(tables) - 2  # all but system.tables and system.databases


def test_a_comment_cannot_smuggle_a_second_statement(gw):
    r = gw.query_raw("SELECT 41 # '\n; SELECT 42 --'", "TSV")
    assert b"42\n" not in r.body, r
    assert refused(r) and b"one statement per request" in r.body, r


def test_other_refusals_say_why(gw):
    for sql, reason in (
        ("SELECT * FROM system.users", b"system.users is not readable"),
        ("SELECT 1 IN system.users", b"system.users is not readable"),
        ("SELECT dictGet('d', 'a', 1)", b"function dictGet is not allowed"),
        ("SELECT 1 SETTINGS readonly = 0", b"SETTINGS is not allowed"),
        ("SET readonly = 0", b"SetQuery is not allowed"),
        ("INSERT INTO sfpla.events (ename) VALUES ('x')", b"is not allowed"),
        ("SHOW PROCESSLIST", b"ShowProcesslistQuery is not allowed"),
        ("SELECT * FROM numbers(3)", b"table functions are not allowed"),
    ):
        r = gw.query_raw(sql, "TSV")
        assert refused(r) and reason in r.body, (sql, r)
    r = gw.query_raw("SELECT 1", "CSV; SELECT 2")
    assert r.status == 400 and b"bad output format" in r.body


# -- what clients send still runs ----------------------------------------------------------


def test_the_queries_clients_send_still_run(gw):
    rows = gw.query("SELECT ename, count() AS n FROM sfpla.events GROUP BY ename ORDER BY ename")
    assert rows == [{"ename": "guard_a", "n": 1}, {"ename": "guard_b", "n": 1}]
    # without a database parameter, names resolve in the tracker's database
    assert b"events\n" in gw.query_raw("SHOW TABLES", "TSV").body
    assert gw.query_raw("SHOW DATABASES", "TSV").status == 200
    describe = gw.query_raw("DESCRIBE sfpla.events", "TSV")
    assert describe.status == 200 and describe.body.startswith(b"eid\t")
    assert gw.query_raw("DESC events FORMAT JSON", "TSV").json()["meta"][0]["name"] == "name"
    assert gw.query_raw("EXISTS sfpla.events", "TSV").body == b"1\n"
    assert gw.query_raw("EXISTS TABLE sfpla.nothing", "TSV").body == b"0\n"
    assert gw.query(
        "WITH names AS (SELECT ename FROM sfpla.events) SELECT count() AS n FROM names"
    ) == [{"n": 2}]
    r = gw.query_raw("SELECT count() AS n FROM sfpla.events FORMAT JSON;", "TSV")
    assert r.status == 200 and r.header("x-clickhouse-format") == "JSON"
    assert r.json()["data"] == [{"n": 2}]
    assert gw.query("SELECT format('{}-{}', 'a', 'b') AS s") == [{"s": "a-b"}]
    # redundant parentheses (which ClickHouse's JSON form of a query drops) are fine
    assert gw.query(
        "SELECT count() AS n FROM sfpla.events WHERE (ename IN (lower('GUARD_A'))) AND ((1))"
    ) == [{"n": 1}]
    assert gw.query_raw("EXPLAIN SELECT count() FROM sfpla.events", "TSV").status == 200
    assert gw.query_raw("SELECT 1 FROM sfpla.nothing").status == 404
    r = gw.query_raw("SELECT nope FROM")
    assert r.status == 400 and r.header("x-clickhouse-exception-code") == "62"


def test_clickhouse_connect_connects_and_queries(gw):
    client = clickhouse_connect.get_client(host="127.0.0.1", port=gw.query_port, database="sfpla")
    try:
        assert client.server_version  # SELECT version(), timezone() and system.settings ran
        result = client.query(
            "SELECT ename, count() AS n FROM events GROUP BY ename ORDER BY ename"
        )
        assert result.result_rows == [("guard_a", 1), ("guard_b", 1)]
        assert client.command("SELECT count() FROM system.columns WHERE table = 'events'") > 0
    finally:
        client.close()


def test_the_cli_query_command(gw):
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "sfpltracker",
            "--config",
            str(gw.config_path),
            "query",
            "--format",
            "CSV",
            "SELECT count() FROM sfpla.events",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
    )
    assert (cli.returncode, cli.stdout) == (0, "2\n"), cli
    cli = subprocess.run(
        [sys.executable, "-m", "sfpltracker", "--config", str(gw.config_path), "query"]
        + ["SELECT file('/etc/passwd')"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
    )
    assert cli.returncode == 1 and "function file is not allowed" in cli.stderr, cli


# -- a ClickHouse server store -------------------------------------------------------------


def test_the_same_guard_in_front_of_a_clickhouse_server(tmp_path, monkeypatch, counter):
    monkeypatch.setenv("SFPL_SCHEMA_DIR", str(downgrade_schema(tmp_path / "schema")))
    database = "guard_" + uuid.uuid4().hex[:8]
    with ClickHouseServer() as server:
        entry = {"Type": "clickhouse", "Hosts": [server.hostport], "Database": database}
        with GatewayProcess(tmp_path, {"Notify": [entry]}) as gw:
            assert gw.http("POST", "/tr/v1/str/", json_body={"ename": "on_server"}).status == 200
            rows = gw.wait_for(
                "SELECT ename FROM events", lambda rows: rows == [{"ename": "on_server"}]
            )
            assert rows == [{"ename": "on_server"}]  # the tracker's database is the default
            assert b"events\n" in gw.query_raw("SHOW TABLES", "TSV").body
            assert gw.query_raw(f"EXISTS TABLE {database}.events", "TSV").body == b"1\n"
            describe = gw.query_raw(f"DESCRIBE TABLE {database}.events", "TSV")
            assert describe.status == 200 and describe.body.startswith(b"eid\t"), describe
            token = (gw.workdir / "data" / "secret.key").read_text().strip()
            for sql in (
                "SELECT file('/etc/passwd')",
                f"DESCRIBE remote('127.0.0.1:{counter.port}', system.one)",
                f"SELECT * FROM remote('127.0.0.1:{counter.port}', system.one)",
                "SELECT * FROM system.processes",
                f"SELECT 1 INTO OUTFILE '{tmp_path / 'written'}'",
            ):
                r = gw.query_raw(sql, "TSV")
                assert refused(r), (sql, r)
                assert token.encode() not in r.body
            r = gw.query_raw("SELECT 1", "TSV", database="system")
            assert refused(r), r
            # The server's paths (its data directory) stay hidden as in the embedded store.
            for sql in (
                "SELECT * FROM system.tables",
                "SELECT data_path FROM system.tables",
                "SELECT metadata_path FROM system.databases",
                "SELECT * FROM system.databases",
                "SELECT * FROM system.parts",
            ):
                r = gw.query_raw(sql, "TSV")
                assert refused(r) and str(server.data_dir).encode() not in r.body, (sql, r)
            rows = gw.query(f"SELECT name FROM system.tables WHERE database = '{database}'")
            assert {"name": "events"} in rows
            time.sleep(0.3)
            assert counter.accepted == 0
            assert not (tmp_path / "written").exists()
