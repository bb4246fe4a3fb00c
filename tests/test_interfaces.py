"""The wiring holds: one composition root, contracts the real parts keep, config apart from web.

- Only ``gateway.py`` and ``service.py`` (the composition root) change a gateway: no other
  module assigns to a gateway's attributes or grows its lists (an AST check over the package).
- Both real stores keep ``store/interface.py``'s ``Store``; chDB's is a ``TokenStore`` and a
  ``SyncingStore``, the server's is neither (its ``insert`` still takes ``token=``); every
  intake is an ``Intake``.
- ``config`` loads without the web or edge modules.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock

import sfpltracker
from sfpltracker.config import load_dict
from sfpltracker.store.interface import (
    Intake,
    MetricSource,
    Store,
    SyncingStore,
    TokenStore,
    token_store,
)

PACKAGE = Path(sfpltracker.__file__).parent
ROOT_MODULES = {PACKAGE / "gateway.py", PACKAGE / "service.py"}
GATEWAY_NAMES = {"gateway", "gw"}
MUTATORS = {"append", "extend", "insert", "update", "setdefault", "pop", "remove", "clear"}


def _names_a_gateway(node: ast.expr) -> bool:
    """``gateway``, ``gw``, ``self.gateway``, ``self.site.gateway``, ``ctx.gateway`` ..."""
    if isinstance(node, ast.Name):
        return node.id in GATEWAY_NAMES
    return isinstance(node, ast.Attribute) and node.attr in GATEWAY_NAMES


def gateway_patches(source: str) -> list[tuple[int, str]]:
    """(line, code) of every statement that changes a gateway's attributes."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute) and _names_a_gateway(target.value):
                found.append((node.lineno, ast.unparse(node)))
        if isinstance(node, ast.Call):
            fn = node.func
            # gateway.metric_sources.append(...), gateway.components.extend(...)
            if (
                isinstance(fn, ast.Attribute)
                and fn.attr in MUTATORS
                and isinstance(fn.value, ast.Attribute)
                and _names_a_gateway(fn.value.value)
            ):
                found.append((node.lineno, ast.unparse(node)))
            # setattr(gateway, ...)
            if isinstance(fn, ast.Name) and fn.id == "setattr" and node.args:
                if _names_a_gateway(node.args[0]):
                    found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_check_finds_each_kind_of_patch():
    source = (
        "gateway.intake = x\n"
        "self.gateway.edge = self\n"
        "self.site.gateway.open_connections += 1\n"
        "gateway.metric_sources.append(f)\n"
        "setattr(gw, 'x', 1)\n"
        "gateway.count('x')\n"  # a call into the gateway: its own method, fine
        "x = gateway.intake\n"
    )
    assert [line for line, _ in gateway_patches(source)] == [1, 2, 3, 4, 5]


def test_no_module_outside_the_composition_root_changes_the_gateway():
    patches = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in ROOT_MODULES:
            continue
        for line, code in gateway_patches(path.read_text()):
            patches.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {code}")
    assert patches == []


def test_both_real_stores_keep_the_store_contract(tmp_path):
    from sfpltracker.store.clickhouse.store import ClickHouseStore
    from sfpltracker.store.embedded.store import EmbeddedStore

    # Built, not started: nothing is opened or connected.
    embedded = EmbeddedStore(tmp_path / "e", reactor)
    server = ClickHouseStore(reactor, ["127.0.0.1:9000"], tmp_path / "c")
    for store in (embedded, server):
        assert isinstance(store, Store)
        assert isinstance(store, MetricSource)
        assert "token" in inspect.signature(store.insert).parameters
    assert isinstance(embedded, SyncingStore)
    assert token_store(embedded) is embedded and isinstance(embedded, TokenStore)
    assert not isinstance(server, SyncingStore)
    assert token_store(server) is None  # insert_tokens = False: batches rely on dedup
    assert embedded.where == str(tmp_path / "e" / "chdb")
    assert server.where == "127.0.0.1:9000"


def test_the_duckdb_store_keeps_the_store_contract(tmp_path):
    from sfpltracker.store.duckdb.store import DuckDBStore

    store = DuckDBStore(tmp_path / "sfpla.duckdb", tmp_path, reactor)  # built, not opened
    assert isinstance(store, Store) and isinstance(store, MetricSource)
    assert token_store(store) is store and isinstance(store, TokenStore)
    # DuckDB syncs its write-ahead log at commit: nothing for the spool loader to ask
    assert not isinstance(store, SyncingStore)
    assert store.where == str(tmp_path / "sfpla.duckdb")


def test_every_intake_keeps_the_intake_contract(tmp_path):
    from sfpltracker.gateway import Gateway
    from sfpltracker.notify.nats import PublishingIntake
    from sfpltracker.pipeline.intake import MemoryIntake
    from sfpltracker.pipeline.jetstream import JetStreamIntake
    from sfpltracker.pipeline.spool_intake import SpoolIntake

    clock = MemoryReactorClock()
    for durability, kind in (("spool", SpoolIntake), ("memory", MemoryIntake)):
        cfg = load_dict({"DataDirectory": str(tmp_path / durability), "Durability": durability})
        gateway = Gateway(cfg, clock)  # not started: the store is never opened
        assert isinstance(gateway.intake, kind)
        assert isinstance(gateway.intake, Intake)
        wrapped = PublishingIntake(gateway.intake, [])
        assert isinstance(wrapped, Intake)
    assert {"start", "accept", "health", "close"} <= set(dir(JetStreamIntake))


def test_config_loads_without_the_web_or_the_edge():
    code = (
        "import sys\n"
        "from sfpltracker.config import load_dict\n"
        "load_dict({'Sites': {'*': {'Proxy': {'/api/': 'http://127.0.0.1:9'}}}})\n"
        "print(sorted(m for m in sys.modules if m.startswith(('sfpltracker.web', "
        "'sfpltracker.edge'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    )
    assert out.stdout.strip() == "[]"


def test_a_bad_proxy_route_is_still_refused_by_config():
    import pytest

    from sfpltracker.config import ConfigError

    with pytest.raises(ConfigError, match=r"Sites\.\*\.Proxy\./api/"):
        load_dict({"Sites": {"*": {"Proxy": {"/api/": "ftp://up"}}}})


def test_the_memory_store_keeps_the_store_contract(tmp_path):
    """``sfpltracker.testing.MemoryStore`` stands in for chDB (a TokenStore) or, without
    tokens, for a ClickHouse server (not one): the gateway it is given must find everything
    ``Store`` names (``where`` for the start-up log line, ``deadletters`` for replay)."""
    from sfpltracker.testing import MemoryStore

    memory = MemoryStore(data_dir=tmp_path)
    assert isinstance(memory, Store)
    assert isinstance(memory, MetricSource)
    assert isinstance(memory, SyncingStore)
    assert token_store(memory) is memory
    assert token_store(MemoryStore(tokens=False)) is None
    assert memory.deadletters.path("events") == tmp_path / "deadletter" / "events.jsonl"
