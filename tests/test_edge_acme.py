"""ACME against a real CA (Debian's Pebble): issuance, SNI, renewal, outage.

Pebble validates against the gateway's own listeners (its http-01 / tls-alpn-01 ports are the
gateway's ProxyPort / ProxyPortTLS; its DNS, pebble-challtestsrv, answers 127.0.0.1 for every
name). The ACME client in the gateway trusts Pebble's HTTPS through ``REQUESTS_CA_BUNDLE``
(the ``acme`` library speaks HTTP with ``requests``). Certificates are checked with a real TLS
client against Pebble's issuance root, which Pebble makes anew on every start.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time

import pytest
from cryptography import x509

from tests.edge_helpers import request
from tests.gateway_process import GatewayProcess
from tests.servers import Pebble, free_port

DOMAINS = ["shop.sfpl.test", "api.sfpl.test"]


def served_certificate(port: int, sni: str) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def verify_with_root(port: int, sni: str, root_pem: str, tmp_path) -> ssl.SSLSocket:
    """A verifying TLS handshake (hostname and chain up to ``root_pem``); returns peer info."""
    cafile = tmp_path / f"root-{time.monotonic_ns()}.pem"
    cafile.write_text(root_pem)
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            return tls.getpeercert()


def wait_until(predicate, timeout: float, what: str, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{log()}")


def acme_gateway(tmp_path, pebble_ports, overrides, name="gw"):
    """A GatewayProcess whose listeners are the ports Pebble validates against."""
    http_port, tls_port = pebble_ports
    gw = GatewayProcess(tmp_path, overrides, name=name)
    gw.config["ProxyPortTLS"] = f"127.0.0.1:{tls_port}"
    gw.tls_port = tls_port
    if gw.config.get("ProxyPort") != "":
        gw.config["ProxyPort"] = f"127.0.0.1:{http_port}"
        gw.port = http_port
    else:
        gw.port = gw.alt_port  # health checks go to ProxyExceptHTTP
    return gw


def issued_for(gw, domain: str, not_serial: int | None = None):
    def check():
        cert = served_certificate(gw.tls_port, domain)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if (
            domain in names.get_values_for_type(x509.DNSName)
            and "Pebble" in cert.issuer.rfc4514_string()
        ):
            if not_serial is None or cert.serial_number != not_serial:
                return cert
        return None

    return wait_until(check, 60, f"a Pebble certificate for {domain}", gw.log_tail)


@pytest.fixture
def ca_env(monkeypatch):
    def use(pebble):
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pebble.ca_bundle_path))

    return use


def test_http01_issuance_two_hosts_sni_verified_by_pebble_root(tmp_path, ca_env):
    http_port, tls_port = free_port(), free_port()
    with Pebble(http_port=http_port, tls_port=tls_port, base_dir=tmp_path / "pebble") as pebble:
        ca_env(pebble)
        gw = acme_gateway(
            tmp_path,
            (http_port, tls_port),
            {
                "LetsEncryptDomains": DOMAINS,
                "ACMEDirectory": pebble.directory_url,
                "ACMEEmail": "ops@sfpl.test",
                "ACMEChallenge": "http-01",
            },
        )
        with gw:
            certs = {d: issued_for(gw, d) for d in DOMAINS}
            root = pebble.issuer_root_pem()
            for domain in DOMAINS:
                # Python's TLS client: hostname + chain verified against Pebble's root.
                peer = verify_with_root(tls_port, domain, root, tmp_path)
                assert ("DNS", domain) in peer["subjectAltName"]
                # And a real HTTPS request over it.
                ctx = ssl.create_default_context(cafile=str(next(tmp_path.glob("root-*.pem"))))
                r = request(tls_port, "GET", "/ping", tls=ctx, server_hostname=domain)
                assert r.status == 200 and r.body == b"pong"
            # Per-host certificates: each name got its own.
            assert certs[DOMAINS[0]].serial_number != certs[DOMAINS[1]].serial_number
            # An unknown name (and no SNI at all) gets the self-signed default.
            other = served_certificate(tls_port, "unknown.sfpl.test")
            assert "Pebble" not in other.issuer.rfc4514_string()
            # openssl s_client agrees (chain verification against Pebble's root).
            if shutil.which("openssl"):
                out = subprocess.run(
                    [
                        "openssl",
                        "s_client",
                        "-connect",
                        f"127.0.0.1:{tls_port}",
                        "-servername",
                        DOMAINS[0],
                        "-verify_hostname",
                        DOMAINS[0],
                        "-CAfile",
                        str(next(tmp_path.glob("root-*.pem"))),
                        "-verify_return_error",
                    ],
                    input=b"",
                    capture_output=True,
                    timeout=30,
                )
                assert b"Verify return code: 0 (ok)" in out.stdout, out.stdout + out.stderr
            # Stored under DataDirectory/acme, account included.
            data = gw.workdir / "data" / "acme"
            assert (data / "account.key").exists() and (data / "account.json").exists()
            for domain in DOMAINS:
                assert (data / "certs" / domain / "fullchain.pem").exists()
                assert (data / "certs" / domain / "privkey.pem").stat().st_mode & 0o077 == 0
            # The metric: days to expiry per served name.
            text = gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
            m = re.search(
                rf'sfpl_tls_certificate_expiry_days{{name="{DOMAINS[0]}",source="acme"}} (\S+)',
                text,
            )
            assert m and float(m.group(1)) > 1, text
            log = gw.log_text()
            assert "ACME http-01: answered the challenge" in log
            assert f"ACME: certificate for {DOMAINS[0]} issued and now served" in log


def test_tls_alpn01_issuance_without_http_listener(tmp_path, ca_env):
    http_port, tls_port = free_port(), free_port()
    with Pebble(http_port=http_port, tls_port=tls_port, base_dir=tmp_path / "pebble") as pebble:
        ca_env(pebble)
        gw = acme_gateway(
            tmp_path,
            (http_port, tls_port),
            {
                "ProxyPort": "",  # no HTTP listener: "auto" has to use tls-alpn-01
                "LetsEncryptDomains": [DOMAINS[0]],
                "ACMEDirectory": pebble.directory_url,
            },
        )
        with gw:
            issued_for(gw, DOMAINS[0])
            peer = verify_with_root(tls_port, DOMAINS[0], pebble.issuer_root_pem(), tmp_path)
            assert ("DNS", DOMAINS[0]) in peer["subjectAltName"]
            log = gw.log_text()
            assert "tls-alpn-01: presented the validation certificate" in log
            assert "ACME http-01: answered" not in log


def test_renewal_with_ca_down_keeps_old_certificate_then_swaps_live(tmp_path, ca_env):
    http_port, tls_port = free_port(), free_port()
    domain = DOMAINS[0]
    overrides = {
        "LetsEncryptDomains": [domain],
        "ACMEChallenge": "http-01",
    }
    with Pebble(http_port=http_port, tls_port=tls_port, base_dir=tmp_path / "pebble") as pebble:
        ca_env(pebble)
        overrides["ACMEDirectory"] = pebble.directory_url
        first = acme_gateway(tmp_path, (http_port, tls_port), overrides, name="first")
        with first:
            old = issued_for(first, domain)
        old_root = pebble.issuer_root_pem()

        # Same data directory, a renewal threshold beyond the certificate's lifetime: the
        # stored certificate is due at once. The CA is down.
        pebble.stop()
        overrides["ACMERenewDays"] = 100000
        overrides["DataDirectory"] = str(first.workdir / "data")
        gw = acme_gateway(tmp_path, (http_port, tls_port), overrides, name="second")
        with gw:
            pid = gw.proc.pid
            wait_until(
                lambda: gw.log_text().count(f"ACME: certificate for {domain} failed") >= 2,
                30,
                "two failed attempts",
                gw.log_tail,
            )
            log = gw.log_text()
            assert "cannot reach the ACME server: connection refused" in log
            assert "retrying in" in log and "still serving the previous certificate" in log
            # Meanwhile the stored certificate keeps being served, and it verifies.
            assert served_certificate(tls_port, domain).serial_number == old.serial_number
            verify_with_root(tls_port, domain, old_root, tmp_path)
            text = gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()
            assert re.search(r"sfpl_acme_failures_total [1-9]", text), text

            # The CA comes back (a new Pebble: new root, forgets the account): the next retry
            # renews, and the live listener serves the new certificate, no restart.
            pebble.start()
            new = issued_for(gw, domain, not_serial=old.serial_number)
            assert gw.proc.pid == pid and gw.proc.poll() is None
            verify_with_root(tls_port, domain, pebble.issuer_root_pem(), tmp_path)
            assert f"(replaces serial {old.serial_number:x})" in gw.log_text()
            assert new.serial_number != old.serial_number

            # An operator can force one more renewal at once: `tls renew DOMAIN`.
            cli = [sys.executable, "-m", "sfpltracker", "--config", str(gw.config_path), "tls"]
            out = subprocess.run([*cli, "renew", domain], capture_output=True, timeout=120)
            assert out.returncode == 0, out.stderr
            status = json.loads(out.stdout)
            served = served_certificate(tls_port, domain).serial_number
            assert served not in (old.serial_number, new.serial_number)
            (acme,) = status["acme"]
            assert acme["domain"] == domain and acme["serial"] == f"{served:x}"
            assert acme["failures"] == 0
            out = subprocess.run([*cli, "renew", "nope.test"], capture_output=True, timeout=60)
            assert out.returncode == 1 and b"not in LetsEncryptDomains" in out.stderr
