"""ACME with Workers: 2 against a real CA (Debian's Pebble), as real processes.

The store process obtains and renews the certificates; the CA's validation connections reach
whichever worker the kernel hands them to, so every worker must answer the challenges, and
every worker must serve each new certificate live. Which worker served a TLS connection is
read from ``/health`` asked over that same connection (a worker's spool series is its name).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys

from cryptography import x509

from tests.gateway_process import ROOT
from tests.servers import Pebble, free_port
from tests.test_edge_acme import acme_gateway, verify_with_root, wait_until

DOMAINS = ["shop.sfpl.test", "api.sfpl.test"]
WORKERS = {"w1", "w2"}
# Every order validated anew (Pebble reuses valid authorizations half the time by default).
NO_REUSE = {"PEBBLE_AUTHZREUSE": "0"}


def handshake(port: int, sni: str) -> tuple[str, x509.Certificate]:
    """One fresh TLS connection: (the worker that served it, the certificate it presented)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            resp = http.client.HTTPResponse(tls)
            resp.begin()
            body = resp.read()
    assert resp.status == 200, body
    return json.loads(body)["spool"]["series"], cert


def by_worker(port: int, sni: str, tries: int = 200) -> dict[str, x509.Certificate]:
    """Fresh connections until every worker has served two: worker -> the certificate it
    presented last."""
    seen: dict[str, list[x509.Certificate]] = {}
    for _ in range(tries):
        worker, cert = handshake(port, sni)
        seen.setdefault(worker, []).append(cert)
        if set(seen) >= WORKERS and all(len(c) >= 2 for c in seen.values()):
            break
    assert set(seen) == WORKERS, f"only {sorted(seen)} answered in {tries} connections"
    return {w: certs[-1] for w, certs in seen.items()}


def pebble_issued(cert: x509.Certificate, domain: str) -> bool:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        domain in names.get_values_for_type(x509.DNSName)
        and "Pebble" in cert.issuer.rfc4514_string()
    )


def every_worker_serves(gw, domain: str, not_serial: int | None = None) -> int:
    """Waits until every worker presents one and the same Pebble certificate for ``domain``
    (other than ``not_serial``); its serial."""

    def check():
        certs = by_worker(gw.tls_port, domain)
        serials = {c.serial_number for c in certs.values()}
        good = all(pebble_issued(c, domain) for c in certs.values())
        if good and len(serials) == 1 and not_serial not in serials:
            return serials.pop()
        return None

    return wait_until(
        check, 90, f"every worker serving a new certificate for {domain}", gw.log_tail
    )


def health(gw) -> dict:
    return json.loads(gw.http("GET", "/health").body)


def worker_pid(gw, name: str):
    # A worker just (re)started answers before the supervisor's first totals reach it (no
    # "processes" yet): connections the kernel queued on its socket meanwhile are its first.
    processes = health(gw).get("processes", [])
    return next((p["pid"] for p in processes if p["name"] == name), None)


@contextlib.contextmanager
def two_workers_with_pebble(tmp_path, monkeypatch, config: dict):
    """Pebble and a gateway of two workers ordering from it (``config`` on top); yields
    (pebble, gateway, the gateway's TLS port)."""
    http_port, tls_port = free_port(), free_port()
    with Pebble(
        http_port=http_port, tls_port=tls_port, base_dir=tmp_path / "pebble", extra_env=NO_REUSE
    ) as pebble:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pebble.ca_bundle_path))
        gw = acme_gateway(
            tmp_path,
            (http_port, tls_port),
            {"Workers": 2, "ACMEDirectory": pebble.directory_url, **config},
        )
        with gw:
            yield pebble, gw, tls_port


def test_two_workers_get_a_certificate_via_http01_and_both_serve_it(tmp_path, monkeypatch):
    config = {"LetsEncryptDomains": DOMAINS, "ACMEChallenge": "http-01"}
    with two_workers_with_pebble(tmp_path, monkeypatch, config) as (pebble, gw, tls_port):
        serials = {d: every_worker_serves(gw, d) for d in DOMAINS}
        assert serials[DOMAINS[0]] != serials[DOMAINS[1]]
        for domain in DOMAINS:  # hostname and chain verify against Pebble's root
            peer = verify_with_root(tls_port, domain, pebble.issuer_root_pem(), tmp_path)
            assert ("DNS", domain) in peer["subjectAltName"]
        # The store process owns the account and the files.
        acme = gw.workdir / "data" / "acme"
        assert (acme / "account.key").exists()
        assert all((acme / "certs" / d / "fullchain.pem").exists() for d in DOMAINS)
        assert all(p["status"] == "ok" for p in health(gw)["processes"])


def test_renewal_swaps_live_in_every_worker_and_a_restarted_worker_serves_it(tmp_path, monkeypatch):
    domain = DOMAINS[0]
    config = {"LetsEncryptDomains": [domain], "ACMEChallenge": "http-01"}
    with two_workers_with_pebble(tmp_path, monkeypatch, config) as (_, gw, tls_port):
        old = every_worker_serves(gw, domain)
        pids = {w: worker_pid(gw, w) for w in WORKERS}

        # A forced renewal (`tls renew`: the admin socket is the store process's).
        cli = [sys.executable, "-m", "sfpltracker", "--config", str(gw.config_path), "tls"]
        out = subprocess.run([*cli, "renew", domain], capture_output=True, timeout=120, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        (status,) = json.loads(out.stdout)["acme"]
        new = int(status["serial"], 16)
        assert new != old
        # Every worker presents it on fresh connections, none restarted.
        certs = by_worker(tls_port, domain)
        assert {w: c.serial_number for w, c in certs.items()} == {w: new for w in WORKERS}
        assert {w: worker_pid(gw, w) for w in WORKERS} == pids

        # The store process's ACME counters, on a worker's /metrics (reported each second).
        def metric() -> str:
            return gw.http("GET", "/metrics", headers={"Accept": "text/plain"}).body.decode()

        issued = re.compile(r"^sfpl_acme_certificates_issued_total 2\.0$", re.M)
        wait_until(lambda: issued.search(metric()), 10, "2 issued on /metrics", metric)

        # A worker killed and started again serves the current certificate too.
        os.kill(pids["w1"], signal.SIGKILL)
        wait_until(lambda: worker_pid(gw, "w1") not in (None, pids["w1"]), 60, "w1 restarted")
        certs = by_worker(tls_port, domain)
        assert {w: c.serial_number for w, c in certs.items()} == {w: new for w in WORKERS}


def test_two_workers_answer_tls_alpn01(tmp_path, monkeypatch):
    domain = DOMAINS[1]
    # no HTTP listener: "auto" uses tls-alpn-01
    config = {"ProxyPort": "", "LetsEncryptDomains": [domain]}
    with two_workers_with_pebble(tmp_path, monkeypatch, config) as (_, gw, _port):
        every_worker_serves(gw, domain)
        assert "tls-alpn-01: presented the validation certificate" in gw.log_text()
