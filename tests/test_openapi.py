"""The OpenAPI description (``/tr/v1/openapi.json``): valid OpenAPI 3.1 and true of a live gateway.

schemathesis (its CLI, the command a user would run, README "The API description") generates
requests from the document for every operation - the examples in it, the boundaries of the GET
and DELETE operations' parameters and the methods each path does not take, then random input,
valid and invalid - and sends them to a real gateway process.
For each answer it checks: no 5xx, a status code the document lists for that operation, the
content type and headers listed, the body valid against the listed schema; a method the
document does not list for a path gets 405 with an ``Allow`` header naming those it does; an
operation under security is refused without the credentials.

Bounded and reproducible: ``EXAMPLES`` per operation, a fixed ``--seed``, no shrinking, so a red
run is the same input every time; the failing request is printed as a curl line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from tests import dashboard_data as dd
from tests.gateway_process import ROOT, GatewayProcess
from tests.test_dashboard_api import FIGURES

SCHEMATHESIS = [sys.executable, "-m", "schemathesis.cli"]
CITY_MMDB = ROOT / "tests" / "data" / "maxmind" / "GeoIP2-City-Test.mmdb"
EXAMPLES = 6  # per operation: ~45 operations, ~45 s on a loaded 2-core machine
SEED = 20261205
DASHBOARD = "^/dashboard/"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "allow_header_conformance",
    "missing_required_header",
    "ignored_auth",
)


def operations(document: dict) -> set[str]:
    return {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch", "head", "options")
    }


def test_the_document_is_valid_openapi_3_1(memory_gateway):
    r = memory_gateway.http("GET", "/tr/v1/openapi.json")
    assert r.status == 200 and r.header("content-type") == "application/json", r
    document = json.loads(r.body)
    validate(document)  # openapi-spec-validator: raises on anything not OpenAPI 3.1
    assert document["openapi"].startswith("3.1")
    described = {path for path in document["paths"]}
    for route in ("tr", "str", "img", "ltv", "rdr", "xrdr", "ppi", "rpi", "pub", "ws"):
        assert any(p.startswith(f"/tr/v1/{route}/") or p == f"/tr/v1/{route}" for p in described)
    assert {"/ping", "/health", "/status", "/metrics", "/clear"} <= described


def test_the_paths_follow_api_version(tmp_path):
    from sfpltracker.testing import MemoryGateway

    with MemoryGateway(tmp_path, {"ApiVersion": 2}) as gw:
        document = json.loads(gw.http("GET", "/tr/v2/openapi.json").body)
    assert "/tr/v2/tr/" in document["paths"] and "/tr/v1/tr/" not in document["paths"]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    config = {
        "Domains": ["localhost", "links.test"],
        "GeoIPDatabase": str(CITY_MMDB),
        "LoginFailureLimit": 0,  # generated credentials must reach the handlers, not a 429
    }
    with GatewayProcess(tmp_path_factory.mktemp("openapi"), config) as gw:
        out = subprocess.run(
            [sys.executable, "-m", "sfpltracker", "--config", str(gw.config_path)]
            + ["account", "create", "--org", "openapi"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        account = dict(re.findall(r"^(\w+):\s*(\S+)$", out.stdout, re.M))
        yield gw, account


def test_a_live_gateway_answers_as_described(live, tmp_path):
    gw, account = live
    url = f"http://127.0.0.1:{gw.port}/tr/v1/openapi.json"
    junit = tmp_path / "junit.xml"
    # The credential path segments get the account's, so those forms reach a save, a delete and
    # a listing; wrong credentials are what ignored_auth sends to the header forms.
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[parameters]\n"
        f'"path.uid" = "{account["uid"]}"\n'
        f'"path.password" = "{account["secret"]}"\n'
        '"path.host" = "links.test"\n'
        # The coverage phase (every boundary of every schema, valid and invalid, and each method
        # a path does not take) is deterministic but unbounded: ~3,000 requests over every
        # operation. It runs on the GET and DELETE operations, which still send every path the
        # methods it does not take; bodies are left to the fuzzing phase (and tests/test_fuzz.py).
        "[[operations]]\n"
        'include-method-regex = "^(POST|PUT)$"\n'
        "phases.coverage.enabled = false\n"
    )
    command = [
        *SCHEMATHESIS,
        f"--config-file={config}",
        "run",
        url,
        f"--checks={','.join(CHECKS)}",
        f"--max-examples={EXAMPLES}",
        f"--seed={SEED}",
        # examples: the document's own; fuzzing: EXAMPLES valid and invalid inputs per operation
        "--phases=examples,coverage,fuzzing",
        "--workers=1",
        "--no-shrink",
        "--max-redirects=0",
        "--continue-on-failure",
        "--request-timeout=20",
        f"--header=Authorization: Bearer {account['token']}",
        "--report=junit",
        f"--report-junit-path={junit}",
        "--no-color",
        # the dashboard's operations are on the query listener: test_the_dashboard_* below
        f"--exclude-path-regex={DASHBOARD}",
    ]
    run = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, timeout=240, env=_env()
    )
    output = run.stdout[-20000:] + run.stderr[-5000:]
    assert run.returncode == 0, output

    # every operation of the document was run, and none failed
    document = json.loads(gw.http("GET", "/tr/v1/openapi.json").body)
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    failed = {
        c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None
    }
    assert not failed, (failed, output)
    tested = {c.get("name") for c in cases if c.find("skipped") is None}
    # schemathesis leaves out the operation it loaded the document from (it got it already)
    expected = {
        op for op in operations(document) if not re.search(DASHBOARD, op.split(" ", 1)[1])
    } - {"GET /tr/v1/openapi.json"}
    assert tested >= expected, (expected - tested, output)
    assert gw.http("GET", "/ping").body == b"pong"
    # the authenticated operations were reached, not only refused: links were saved (and the
    # delete operation got a saved link's urlfrom from schemathesis' response-derived data)
    changes = gw.query("SELECT DISTINCT action FROM sfpla.redirect_history")
    assert {row["action"] for row in changes} >= {"create"}, changes


def _env() -> dict[str, str]:
    import os

    # no user or project schemathesis.toml may change what this run checks
    return {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}


# What the fuzzer found (unsupported_method: RFC 9110 15.5.6, a 405 MUST carry ``Allow``).
@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("DELETE", "/tr/v1/tr/", "GET, HEAD, POST, PUT, OPTIONS"),
        ("DELETE", "/tr/v1/img/x/y", "GET, HEAD, POST, PUT, OPTIONS"),
        ("DELETE", "/tr/v1/ltv/", "GET, HEAD, POST, PUT, OPTIONS"),
        ("PUT", "/tr/v1/ppi/jds", "GET, HEAD, OPTIONS"),
        ("POST", "/tr/v1/ppi/geoip", "GET, HEAD, OPTIONS"),
        ("PATCH", "/tr/v1/rpi/redirect", "POST, DELETE, OPTIONS"),
        ("GET", "/tr/v1/rpi/redirect/uid/secret", "POST, DELETE, OPTIONS"),
        ("PUT", "/tr/v1/rpi/redirects/example.com", "GET, HEAD, OPTIONS"),
        ("POST", "/tr/v1/ws", "GET"),
    ],
)
def test_a_405_names_the_methods_that_work(memory_gateway, method, path, allowed):
    r = memory_gateway.http(method, path)
    assert r.status == 405 and json.loads(r.body)["error"], r
    assert r.header("allow") == allowed, r
    for other in allowed.split(", "):
        assert memory_gateway.http(other, path).status != 405, (other, path)


# -- the dashboard's API (on the query listener) ----------------------------------------------


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """A gateway with the dashboard tests' known data, signed in, and its document."""
    with GatewayProcess(tmp_path_factory.mktemp("openapi-dashboard"), dd.CONFIG) as gw:
        gw.data = dd.load(gw)
        d = dd.Dashboard(gw)
        r = d.login(gw.data["account"]["uid"], gw.data["account"]["secret"])
        assert r.status == 200, r.body
        yield d, json.loads(gw.http("GET", "/tr/v1/openapi.json").body)


def answer_schema(document: dict, path: str, method: str, status: int) -> Draft202012Validator:
    """A validator for the JSON answer the document describes (``$ref``s resolved in it)."""
    response = document["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:  # a shared response: #/components/responses/<name>
        response = document["components"]["responses"][response["$ref"].rpartition("/")[2]]
    schema = {**response["content"]["application/json"]["schema"]}
    schema["components"] = document["components"]  # so "#/components/..." resolves
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_the_dashboard_api_is_described_on_the_query_listener(dashboard):
    _, document = dashboard
    validate(document)
    for name in (*FIGURES, "login", "logout", "session"):
        item = document["paths"].get(f"/dashboard/api/{name}")
        assert item is not None, name
        assert "QueryPort" in item["servers"][0]["url"], name
    for figure in FIGURES:
        op = document["paths"][f"/dashboard/api/{figure}"]["get"]
        assert op["security"] == [{"dashboardSession": []}]
        assert {p["name"] for p in op["parameters"]} >= {"from", "to", "host", "device", "limit"}
        assert {"200", "400", "401"} <= set(op["responses"])


@pytest.mark.parametrize(
    "query",
    ["", "device=Desktop&source=google", "host=go.example&limit=3",
     "steps=page_view,signup,purchase&window=3600", "from=2020-01-01&to=2020-01-02"],
)  # fmt: skip
def test_every_dashboard_answer_matches_its_schema(dashboard, query):
    """Each figure's real answer (known data, segments, an hourly range, a funnel) is valid
    against the 200 schema of its path, with no field left undescribed."""
    d, document = dashboard
    for figure in FIGURES:
        r = d.request("GET", f"/dashboard/api/{figure}?{query}")
        assert r.status == 200, (figure, r.status, r.body)
        body = r.json()
        errors = list(answer_schema(document, f"/dashboard/api/{figure}", "get", 200)
                      .iter_errors(body))  # fmt: skip
        assert not errors, (figure, query, [e.message for e in errors], body)


def test_dashboard_refusals_match_their_schemas(dashboard):
    d, document = dashboard
    anonymous = dd.Dashboard(d.gw)
    for figure in FIGURES:
        r = anonymous.request("GET", f"/dashboard/api/{figure}")
        assert r.status == 401, (figure, r.status)
        answer_schema(document, f"/dashboard/api/{figure}", "get", 401).validate(r.json())
    r = d.request("GET", "/dashboard/api/pages?from=yesterday")
    assert r.status == 400
    answer_schema(document, "/dashboard/api/pages", "get", 400).validate(r.json())
    for who in (anonymous, d):
        r = who.request("GET", "/dashboard/api/session")
        assert r.status == 200
        answer_schema(document, "/dashboard/api/session", "get", 200).validate(r.json())
    r = anonymous.login("nobody", "wrong")
    assert r.status == 401
    answer_schema(document, "/dashboard/api/login", "post", 401).validate(r.json())
    r = d.request("POST", "/dashboard/api/logout")  # no CSRF token
    assert r.status == 403
    answer_schema(document, "/dashboard/api/logout", "post", 403).validate(r.json())
    r = anonymous.request("POST", "/dashboard/api/logout", headers={"X-CSRF-Token": "x"})
    assert r.status == 401
    answer_schema(document, "/dashboard/api/logout", "post", 401).validate(r.json())
    # a second session signs in and out, so the signed-in session stays for the other tests
    other = dd.Dashboard(d.gw)
    r = other.login(d.gw.data["account"]["uid"], d.gw.data["account"]["secret"])
    assert r.status == 200
    answer_schema(document, "/dashboard/api/login", "post", 200).validate(r.json())
    r = other.request("POST", "/dashboard/api/logout", headers={"X-CSRF-Token": other.csrf})
    assert r.status == 200
    answer_schema(document, "/dashboard/api/logout", "post", 200).validate(r.json())


def test_the_dashboard_operations_answer_as_described(dashboard, tmp_path):
    """schemathesis over the dashboard's operations on the query listener, signed in."""
    d, _ = dashboard
    junit = tmp_path / "junit.xml"
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[servers.variables]\nQueryPort = "127.0.0.1:{d.gw.query_port}"\n')
    command = [
        *SCHEMATHESIS,
        f"--config-file={config}",
        "run",
        f"http://127.0.0.1:{d.gw.port}/tr/v1/openapi.json",
        f"--include-path-regex={DASHBOARD}",
        f"--checks={','.join(CHECKS)}",
        f"--max-examples={EXAMPLES}",
        f"--seed={SEED}",
        "--phases=examples,coverage,fuzzing",
        "--workers=1",
        "--no-shrink",
        "--max-redirects=0",
        "--continue-on-failure",
        "--request-timeout=20",
        # the session; no CSRF token, so a generated logout is refused and the session stays
        f"--header=Cookie: {d.cookie}",
        "--report=junit",
        f"--report-junit-path={junit}",
        "--no-color",
    ]
    run = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, timeout=240, env=_env()
    )
    output = run.stdout[-20000:] + run.stderr[-5000:]
    assert run.returncode == 0, output
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    assert {c.get("name") for c in cases if c.find("skipped") is None} >= {
        f"GET /dashboard/api/{figure}" for figure in FIGURES
    }, output
    assert d.request("GET", "/dashboard/api/session").json()["signed_in"] is True
