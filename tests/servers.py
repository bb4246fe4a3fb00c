"""Real servers as child processes, for integration tests.

Every helper here starts a genuine server binary (Debian packages installed by
``.ci/install-servers.sh``) on ``127.0.0.1`` with free ports and a private
temporary directory, captures the process's stdout/stderr to a log file in that
directory, and stops everything it started.  Nothing here imports pytest, so the
helpers can be used from fixtures, from plain scripts and from benchmarks::

    with ClickHouseServer() as ch:
        ch.client().execute("SELECT 1")

    with NatsServer(jetstream=True) as nats:
        ...  # nats.url == "nats://127.0.0.1:NNNN"

    with Pebble(http_port=gateway_http_port, tls_port=gateway_tls_port) as pebble:
        ...  # pebble.directory_url, pebble.ca_bundle_path, pebble.issuer_root_pem()

Safety nets: each child runs in its own session (``start_new_session=True``) and
is stopped by process group; an ``atexit`` hook SIGKILLs whatever is still
running when the interpreter exits; and, when started from the main thread, the
child gets ``PR_SET_PDEATHSIG=SIGKILL`` so that it dies with the test process
even if that process is killed hard.  Temp dirs created here are removed by
``cleanup()`` (called by ``__exit__``) and, failing that, at interpreter exit
unless ``SFPL_KEEP_SERVER_DIRS`` is set (to keep logs for a post-mortem); a
``base_dir`` passed in (e.g. pytest's ``tmp_path``) is never removed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from xml.sax.saxutils import escape as _xml_escape

__all__ = [
    "ClickHouseServer",
    "NatsServer",
    "Pebble",
    "ServerStartError",
    "free_port",
    "wait_for_port",
]

HOST = "127.0.0.1"


class ServerStartError(RuntimeError):
    """A server did not come up (exited early or timed out); message has the log tail."""


# --------------------------------------------------------------------------- utilities


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_picked: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1, free now, chosen below the kernel's ephemeral range.

    Port 0 hands out an ephemeral port: the range every outgoing connection (the tests'
    clients, the gateway's upstream and store connections) takes its local port from, so
    between choosing and a server's bind a connection could take it (seen in CI: "Address
    already in use" at a gateway's start). Below that range only listeners bind; a port is
    not handed out twice in one test run."""
    low, _ = _ephemeral_range()
    first = 20000 if low > 21000 else 1024
    while True:
        port = random.randrange(first, low)
        if port in _picked:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        _picked.add(port)
        return port


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports."""
    return [free_port() for _ in range(n)]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 30.0, proc=None) -> None:
    """Wait until a TCP connect to (host, port) succeeds.

    Raises TimeoutError after ``timeout`` seconds, or RuntimeError at once if the
    optional ``proc`` (a Popen) exits meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        if _port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited with code {proc.returncode} before {host}:{port} opened"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout:.1f}s")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = Path(path).read_bytes()[-64 * 1024 :]
    except OSError:
        return f"<no log at {path}>"
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    return "\n".join(text)


def _find_binary(*candidates: str) -> str | None:
    for c in candidates:
        if os.path.isabs(c):
            if os.access(c, os.X_OK):
                return c
        else:
            found = shutil.which(c)
            if found:
                return found
    return None


# ---------------------------------------------------------------- process bookkeeping

_LIVE: set[subprocess.Popen] = set()
_OWNED_DIRS: set[Path] = set()
_LIVE_LOCK = threading.Lock()

try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _PRCTL = _LIBC.prctl
except (OSError, AttributeError):  # pragma: no cover - non-Linux
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _terminate(proc: subprocess.Popen, timeout: float) -> int | None:
    """SIGTERM the process group, wait up to ``timeout``, then SIGKILL."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(10)
    with _LIVE_LOCK:
        _LIVE.discard(proc)
    return proc.returncode


def _kill(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        _signal_group(proc, signal.SIGKILL)
        proc.wait(10)
    with _LIVE_LOCK:
        _LIVE.discard(proc)
    return proc.returncode


@atexit.register
def _kill_all_at_exit() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        with contextlib.suppress(Exception):
            _kill(proc)
    if not os.environ.get("SFPL_KEEP_SERVER_DIRS"):
        for d in list(_OWNED_DIRS):
            shutil.rmtree(d, ignore_errors=True)


def _spawn(argv: list[str], log_path: Path, *, env=None, cwd=None) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n===== {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        preexec = (
            _die_with_parent if threading.current_thread() is threading.main_thread() else None
        )
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509 - only prctl(), set from the main thread
            close_fds=True,
        )
    with _LIVE_LOCK:
        _LIVE.add(proc)
    return proc


class _TempDirOwner:
    """Owns a work directory: a fresh temp dir (removed by ``cleanup``) or a given one."""

    _prefix = "sfpl-server-"

    def __init__(self, base_dir: str | os.PathLike | None) -> None:
        if base_dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix=self._prefix))
            self._own_dir = True
            _OWNED_DIRS.add(self.dir)
        else:
            self.dir = Path(base_dir)
            self.dir.mkdir(parents=True, exist_ok=True)
            self._own_dir = False

    def cleanup(self) -> None:
        """Stop the server(s); remove the temp dir if this object created it.

        The dir is kept when ``SFPL_KEEP_SERVER_DIRS`` is set in the environment.
        """
        self.stop()
        if self._own_dir and not os.environ.get("SFPL_KEEP_SERVER_DIRS"):
            shutil.rmtree(self.dir, ignore_errors=True)
            _OWNED_DIRS.discard(self.dir)

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def start(self):  # pragma: no cover - overridden
        raise NotImplementedError


# ------------------------------------------------------------------------- ClickHouse


def _xml_settings(settings: dict | None, indent: str) -> str:
    return "".join(
        f"{indent}<{k}>{_xml_escape(str(int(v) if isinstance(v, bool) else v))}</{k}>\n"
        for k, v in (settings or {}).items()
    )


class ClickHouseServer(_TempDirOwner):
    """ClickHouse server (Debian's 18.16) with a private config in a temp dir.

    The generated ``config.xml`` listens on 127.0.0.1 only, with free ``tcp_port``
    and ``http_port``, no interserver port, data/tmp/user_files/format_schemas
    under ``<dir>/data``, logs in ``<dir>/log``, and an empty ``include_from``
    file so that ``/etc/metrika.xml`` (the system-wide substitutions file) is not
    read.  ``users.xml`` is generated too; ``/etc/clickhouse-server`` is not used.

    ``user``/``password``: when ``user`` is not ``"default"`` an extra user is
    created (``default`` keeps no password and localhost-only access); when it is
    ``"default"`` the password is set on ``default``.  ``client()`` logs in as
    ``user``.  ``profile_settings`` are added to the default settings profile
    (e.g. ``{"allow_experimental_low_cardinality_type": 1}``), ``extra_config`` is
    raw XML put inside ``<yandex>``.

    ``remote_servers_cluster="name"`` adds a ``<remote_servers>`` cluster with one
    shard of one replica pointing at this very server (``127.0.0.1:tcp_port``,
    with the credentials above) plus ``<macros>`` ``shard``/``replica`` (and
    ``cluster``).  This makes ``Distributed('name', db, table)`` tables work.

    ``ON CLUSTER`` DDL does NOT work on 18.16 without ZooKeeper: it goes through
    the distributed DDL queue, which lives in ZooKeeper, and with no
    ``<zookeeper>`` section the server answers ``Code: 49 ... DDL background
    thread is not initialized`` (checked both with and without a
    ``<distributed_ddl>`` section).  So SQL meant for 18.16 without ZooKeeper must
    not use ``ON CLUSTER`` (nor ``Replicated*MergeTree``); only ``remote_servers``
    is provided, so ``Distributed`` tables work (checked by
    ``tests/test_servers.py::test_clickhouse_cluster_distributed``).

    The default profile sets ``poll_interval=1`` (default 10): a native-protocol
    connection left open otherwise delays a graceful ``stop()`` by ~10 s.
    """

    _prefix = "sfpl-clickhouse-"

    def __init__(
        self,
        *,
        user: str = "default",
        password: str | None = None,
        remote_servers_cluster: str | None = None,
        profile_settings: dict | None = None,
        extra_config: str = "",
        base_dir: str | os.PathLike | None = None,
        tcp_port: int | None = None,
        http_port: int | None = None,
        start_timeout: float = 60.0,
        binary: str | None = None,
    ) -> None:
        super().__init__(base_dir)
        self.user = user
        self.password = password
        self.remote_servers_cluster = remote_servers_cluster
        self.profile_settings = dict(profile_settings or {})
        self.extra_config = extra_config
        ports = _free_ports(2)
        self._tcp_port = tcp_port or ports[0]
        self._http_port = http_port or (ports[1] if ports[1] != self._tcp_port else ports[0])
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "log" / "stdout.log"
        self.server_log_path = self.dir / "log" / "clickhouse-server.log"
        self.server_err_log_path = self.dir / "log" / "clickhouse-server.err.log"
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "config.xml"
        self.users_path = self.dir / "users.xml"
        self._argv_prefix = self._resolve_binary(binary)
        self._write_config()

    # -- properties
    @property
    def host(self) -> str:
        return HOST

    @property
    def tcp_port(self) -> int:
        return self._tcp_port

    @property
    def http_port(self) -> int:
        return self._http_port

    @property
    def hostport(self) -> str:
        return f"{HOST}:{self._tcp_port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self._http_port}/"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- config
    @staticmethod
    def _resolve_binary(binary: str | None) -> list[str]:
        if binary:
            return [binary, "server"] if Path(binary).name == "clickhouse" else [binary]
        found = _find_binary("/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server")
        found = found or _find_binary("clickhouse-server")
        if found:
            return [found]
        found = _find_binary("clickhouse")
        if found:
            return [found, "server"]
        raise FileNotFoundError(
            "clickhouse-server not found; run .ci/install-servers.sh (Debian clickhouse-server)"
        )

    def _write_config(self) -> None:
        d = self.data_dir
        for sub in ("", "tmp", "user_files", "format_schemas"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "log").mkdir(parents=True, exist_ok=True)
        metrika = self.dir / "metrika.xml"
        metrika.write_text('<?xml version="1.0"?>\n<yandex></yandex>\n')
        cluster = ""
        if self.remote_servers_cluster:
            creds = f"<user>{_xml_escape(self.user)}</user>"
            if self.password:
                creds += f"<password>{_xml_escape(self.password)}</password>"
            name = self.remote_servers_cluster
            cluster = f"""
    <remote_servers>
        <{name}>
            <shard>
                <internal_replication>false</internal_replication>
                <replica><host>{HOST}</host><port>{self._tcp_port}</port>{creds}</replica>
            </shard>
        </{name}>
    </remote_servers>
    <macros>
        <cluster>{name}</cluster>
        <shard>01</shard>
        <replica>replica01</replica>
    </macros>
"""
        config = f"""<?xml version="1.0"?>
<!-- generated by tests/servers.py; private to this test server -->
<yandex>
    <logger>
        <level>information</level>
        <log>{self.server_log_path}</log>
        <errorlog>{self.server_err_log_path}</errorlog>
        <size>100M</size>
        <count>1</count>
    </logger>
    <include_from>{metrika}</include_from>
    <listen_host>{HOST}</listen_host>
    <tcp_port>{self._tcp_port}</tcp_port>
    <http_port>{self._http_port}</http_port>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>{d}/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>{self.users_path}</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <umask>022</umask>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
    <dictionaries_config>{self.dir}/*_dictionary.xml</dictionaries_config>
    <max_table_size_to_drop>0</max_table_size_to_drop>
    <max_partition_size_to_drop>0</max_partition_size_to_drop>
{cluster}{self.extra_config}
</yandex>
"""
        self.config_path.write_text(config)

        def user_xml(name: str, password: str | None) -> str:
            return f"""        <{name}>
            <password>{_xml_escape(password or "")}</password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </{name}>
"""

        users = user_xml("default", self.password if self.user == "default" else None)
        if self.user != "default":
            users += user_xml(self.user, self.password)
        settings = {"max_memory_usage": 4_000_000_000, "poll_interval": 1, **self.profile_settings}
        self.users_path.write_text(
            f"""<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
{_xml_settings(settings, "            ")}        </default>
        <readonly><readonly>1</readonly></readonly>
    </profiles>
    <users>
{users}    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries><errors>0</errors><result_rows>0</result_rows>
                <read_rows>0</read_rows><execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""
        )

    # -- lifecycle
    def client(self, **kw):
        """A ``clickhouse_driver.Client`` for this server (kwargs override defaults)."""
        from clickhouse_driver import Client

        opts = {
            "host": HOST,
            "port": self._tcp_port,
            "user": self.user,
            "password": self.password or "",
            "connect_timeout": 5,
            "send_receive_timeout": 60,
        }
        opts.update(kw)
        return Client(**opts)

    def log_tail(self, lines: int = 40) -> str:
        return (
            f"--- {self.log_path} ---\n{_tail(self.log_path, lines)}\n"
            f"--- {self.server_err_log_path} ---\n{_tail(self.server_err_log_path, lines)}"
        )

    def start(self) -> ClickHouseServer:
        """Start the server; return once ``SELECT 1`` over the native protocol works."""
        if self.running:
            return self
        argv = [*self._argv_prefix, f"--config-file={self.config_path}"]
        self.proc = _spawn(argv, self.log_path, cwd=str(self.dir))
        deadline = time.monotonic() + self.start_timeout
        last_exc: Exception | None = None
        while True:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"clickhouse-server exited with code {self.proc.returncode} during startup\n"
                    + self.log_tail()
                )
            if _port_open(HOST, self._tcp_port):
                client = self.client(connect_timeout=1, send_receive_timeout=2)
                try:
                    if client.execute("SELECT 1") == [(1,)]:
                        return self
                except Exception as exc:  # noqa: BLE001 - keep polling until deadline
                    last_exc = exc
                finally:
                    client.disconnect()
            if time.monotonic() >= deadline:
                self.kill()
                raise ServerStartError(
                    f"clickhouse-server on {self.hostport} not ready within "
                    f"{self.start_timeout:.0f}s (last error: {last_exc!r})\n" + self.log_tail()
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        return _terminate(self.proc, timeout)

    def kill(self) -> int | None:
        """SIGKILL (simulates a crash). Data dir and ports are kept for ``restart()``."""
        if self.proc is None:
            return None
        return _kill(self.proc)

    def restart(self) -> ClickHouseServer:
        """Stop (if running) and start again on the same ports with the same data dir."""
        self.stop()
        return self.start()


# ------------------------------------------------------------------------------- NATS


class NatsServer(_TempDirOwner):
    """``nats-server -a 127.0.0.1 -p PORT`` with optional JetStream and monitoring.

    ``jetstream=True`` adds ``-js -sd <dir>/jetstream`` (the store survives
    ``kill()``/``restart()``); ``monitoring=True`` adds ``-m <free port>`` (see
    ``monitoring_url``).  ``extra_args`` are appended to the command line.
    """

    _prefix = "sfpl-nats-"

    def __init__(
        self,
        *,
        jetstream: bool = False,
        monitoring: bool = False,
        port: int | None = None,
        extra_args: list[str] | None = None,
        base_dir: str | os.PathLike | None = None,
        start_timeout: float = 20.0,
        binary: str | None = None,
    ) -> None:
        super().__init__(base_dir)
        self.jetstream = jetstream
        ports = [p for p in _free_ports(3) if p != port]
        self._port = port or ports.pop()
        self._monitoring_port = ports.pop() if monitoring else None
        self.extra_args = list(extra_args or [])
        self.start_timeout = start_timeout
        self.store_dir = self.dir / "jetstream"
        self.log_path = self.dir / "nats-server.log"
        self.proc: subprocess.Popen | None = None
        self.binary = binary or _find_binary(
            "nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"
        )
        if not self.binary:
            raise FileNotFoundError("nats-server not found; run .ci/install-servers.sh")

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self._port}"

    @property
    def monitoring_port(self) -> int | None:
        return self._monitoring_port

    @property
    def monitoring_url(self) -> str | None:
        return f"http://{HOST}:{self._monitoring_port}" if self._monitoring_port else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return f"--- {self.log_path} ---\n{_tail(self.log_path, lines)}"

    def _argv(self) -> list[str]:
        argv = [self.binary, "-a", HOST, "-p", str(self._port), "-n", f"sfpl-test-{self._port}"]
        if self._monitoring_port:
            argv += ["-m", str(self._monitoring_port)]
        if self.jetstream:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            argv += ["-js", "-sd", str(self.store_dir)]
        return argv + self.extra_args

    def start(self) -> NatsServer:
        """Start and wait until the client port accepts and the log says it is ready."""
        if self.running:
            return self
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = _spawn(self._argv(), self.log_path, cwd=str(self.dir))
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"nats-server exited with code {self.proc.returncode} during startup\n"
                    + self.log_tail()
                )
            if _port_open(HOST, self._port):
                with open(self.log_path, "rb") as f:
                    f.seek(offset)
                    if b"Server is ready" in f.read():
                        return self
            if time.monotonic() >= deadline:
                self.kill()
                raise ServerStartError(
                    f"nats-server on {self.url} not ready within {self.start_timeout:.0f}s\n"
                    + self.log_tail()
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        return _terminate(self.proc, timeout)

    def kill(self) -> int | None:
        """SIGKILL (simulates a crash); port and JetStream store are kept."""
        if self.proc is None:
            return None
        return _kill(self.proc)

    def restart(self) -> NatsServer:
        """Stop (if running) and start again: same port, same JetStream store dir."""
        self.stop()
        return self.start()


# ----------------------------------------------------------------------------- Pebble


def _make_test_pki(directory: Path, names=("localhost",), ips=("127.0.0.1", "::1")):
    """Write ca.pem, cert.pem, key.pem (EC P-256) for Pebble's own HTTPS listeners."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "sfpltracker test Pebble HTTPS CA")]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    ca_path.write_bytes(ca_cert.public_bytes(pem))
    cert_path.write_bytes(cert.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


class Pebble(_TempDirOwner):
    """Debian's ``pebble`` ACME test CA, with ``pebble-challtestsrv`` as its DNS.

    The Debian package ships no test certificates (upstream's
    ``test/certs/localhost/{cert,key}.pem`` and ``pebble.minica.pem`` are not in
    it), so a throw-away CA and a server certificate for ``localhost``,
    ``127.0.0.1`` and ``::1`` are generated with ``cryptography`` into the temp
    dir; ``ca_bundle_path`` is that CA, to verify Pebble's HTTPS (ACME directory
    and management interface).

    Ports, all on 127.0.0.1: ``acme_port`` (``directory_url`` =
    ``https://127.0.0.1:PORT/dir``), ``management_port`` (``/roots/0``,
    ``/intermediates/0``...), ``dns_port`` (challtestsrv's mock DNS, UDP+TCP,
    answering A=127.0.0.1 for every name and no AAAA unless ``default_ipv6`` is
    given; passed to pebble as ``-dnsserver``), ``challtestsrv_port``
    (challtestsrv's management HTTP API).  challtestsrv's own HTTP-01, HTTPS-01 and
    TLS-ALPN-01 responders are disabled (2.4 has no DoH server).

    ``http_port`` / ``tls_port`` are Pebble's *validation* ports: where Pebble
    connects (to 127.0.0.1) for http-01 and tls-alpn-01 challenges; point them at
    the listeners under test.  Defaults are free, unused ports.

    Environment: ``PEBBLE_VA_NOSLEEP=1``, ``PEBBLE_WFE_NONCEREJECT=0``,
    ``PEBBLE_VA_ALWAYS_VALID=0`` (``always_valid=True`` makes it 1);
    ``extra_env`` overrides/adds (e.g. ``{"PEBBLE_AUTHZREUSE": "0"}``).
    Pebble keeps no state across restarts and generates a new issuance root on
    every start, so fetch ``issuer_root_pem()`` after ``start()``.
    """

    _prefix = "sfpl-pebble-"

    def __init__(
        self,
        *,
        http_port: int | None = None,
        tls_port: int | None = None,
        always_valid: bool = False,
        default_ipv4: str = HOST,
        default_ipv6: str = "",
        extra_env: dict | None = None,
        base_dir: str | os.PathLike | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(base_dir)
        ports = [p for p in _free_ports(8) if p not in (http_port, tls_port)]
        self.http_port = http_port or ports.pop()
        self.tls_port = tls_port or ports.pop()
        self.always_valid = always_valid
        self.default_ipv4 = default_ipv4
        self.default_ipv6 = default_ipv6
        self.extra_env = dict(extra_env or {})
        self.start_timeout = start_timeout
        self.acme_port = ports.pop()
        self.management_port = ports.pop()
        self.dns_port = ports.pop()
        self.challtestsrv_port = ports.pop()
        self.log_path = self.dir / "pebble.log"
        self.challtestsrv_log_path = self.dir / "challtestsrv.log"
        self.config_path = self.dir / "pebble-config.json"
        self.pebble_binary = _find_binary("pebble", "/usr/bin/pebble")
        self.challtestsrv_binary = _find_binary(
            "pebble-challtestsrv", "/usr/bin/pebble-challtestsrv"
        )
        if not self.pebble_binary or not self.challtestsrv_binary:
            raise FileNotFoundError(
                "pebble / pebble-challtestsrv not found; run .ci/install-servers.sh"
            )
        self.ca_bundle_path, self.cert_path, self.key_path = _make_test_pki(self.dir)
        self.proc: subprocess.Popen | None = None
        self.challtestsrv_proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return HOST

    @property
    def directory_url(self) -> str:
        return f"https://{HOST}:{self.acme_port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://{HOST}:{self.management_port}"

    @property
    def challtestsrv_url(self) -> str:
        """challtestsrv management API, e.g. POST /add-a, /set-default-ipv4, /clear-a."""
        return f"http://{HOST}:{self.challtestsrv_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ssl_context(self) -> ssl.SSLContext:
        """An SSLContext trusting only ``ca_bundle_path`` (Pebble's HTTPS)."""
        return ssl.create_default_context(cafile=str(self.ca_bundle_path))

    def _get(self, url: str, timeout: float = 10.0) -> bytes:
        with urllib.request.urlopen(url, context=self.ssl_context(), timeout=timeout) as resp:  # noqa: S310
            return resp.read()

    def issuer_root_pem(self, index: int = 0) -> str:
        """Pebble's current issuance root (PEM), from management ``/roots/<index>``."""
        return self._get(f"{self.management_url}/roots/{index}").decode()

    def issuer_intermediate_pem(self, index: int = 0) -> str:
        """Pebble's current issuing intermediate (PEM), from ``/intermediates/<index>``."""
        return self._get(f"{self.management_url}/intermediates/{index}").decode()

    def log_tail(self, lines: int = 40) -> str:
        return (
            f"--- {self.log_path} ---\n{_tail(self.log_path, lines)}\n"
            f"--- {self.challtestsrv_log_path} ---\n{_tail(self.challtestsrv_log_path, lines)}"
        )

    def _write_config(self) -> None:
        cfg = {
            "pebble": {
                "listenAddress": f"{HOST}:{self.acme_port}",
                "managementListenAddress": f"{HOST}:{self.management_port}",
                "certificate": str(self.cert_path),
                "privateKey": str(self.key_path),
                "httpPort": self.http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        self.config_path.write_text(json.dumps(cfg, indent=2))

    def _wait(self, proc, name: str, ports, deadline: float) -> None:
        for port in ports:
            while not _port_open(HOST, port):
                if proc.poll() is not None:
                    raise ServerStartError(
                        f"{name} exited with code {proc.returncode} during startup\n"
                        + self.log_tail()
                    )
                if time.monotonic() >= deadline:
                    self.stop()
                    raise ServerStartError(
                        f"{name} port {port} not open within {self.start_timeout:.0f}s\n"
                        + self.log_tail()
                    )
                time.sleep(0.05)

    def start(self) -> Pebble:
        """Start challtestsrv then pebble; return once the ACME directory answers."""
        if self.running:
            return self
        deadline = time.monotonic() + self.start_timeout
        self.challtestsrv_proc = _spawn(
            [
                self.challtestsrv_binary,
                "-management",
                f"{HOST}:{self.challtestsrv_port}",
                "-dns01",
                f"{HOST}:{self.dns_port}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                self.default_ipv4,
                "-defaultIPv6",
                self.default_ipv6,
            ],
            self.challtestsrv_log_path,
            cwd=str(self.dir),
        )
        self._wait(
            self.challtestsrv_proc, "pebble-challtestsrv", [self.challtestsrv_port], deadline
        )
        # the DNS server also listens on TCP on the same address
        self._wait(self.challtestsrv_proc, "pebble-challtestsrv (dns)", [self.dns_port], deadline)

        self._write_config()
        env = dict(os.environ)
        env.update(
            {
                "PEBBLE_VA_NOSLEEP": "1",
                "PEBBLE_WFE_NONCEREJECT": "0",
                "PEBBLE_VA_ALWAYS_VALID": "1" if self.always_valid else "0",
            }
        )
        env.update({k: str(v) for k, v in self.extra_env.items()})
        self.proc = _spawn(
            [
                self.pebble_binary,
                "-config",
                str(self.config_path),
                "-dnsserver",
                f"{HOST}:{self.dns_port}",
            ],
            self.log_path,
            env=env,
            cwd=str(self.dir),
        )
        self._wait(self.proc, "pebble", [self.acme_port, self.management_port], deadline)
        last_exc: Exception | None = None
        while True:
            try:
                directory = json.loads(self._get(self.directory_url, timeout=2))
                if "newAccount" in directory:
                    return self
            except Exception as exc:  # noqa: BLE001 - keep polling until deadline
                last_exc = exc
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                self.stop()
                raise ServerStartError(
                    f"pebble directory {self.directory_url} not served (last error: {last_exc!r})\n"
                    + self.log_tail()
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        for proc in (self.proc, self.challtestsrv_proc):
            if proc is not None:
                _terminate(proc, timeout)

    def kill(self) -> None:
        for proc in (self.proc, self.challtestsrv_proc):
            if proc is not None:
                _kill(proc)

    def restart(self) -> Pebble:
        """Stop and start again on the same ports (Pebble itself forgets all state)."""
        self.stop()
        return self.start()
