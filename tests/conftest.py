import pytest
import pytest_twisted
from twisted.internet import reactor

from sfpltracker.store.embedded.store import EmbeddedStore
from sfpltracker.testing import MemoryGateway
from tests.gateway_process import GatewayProcess


@pytest.fixture
def gateway(tmp_path):
    """A running gateway on the embedded store with default settings."""
    with GatewayProcess(tmp_path) as gw:
        yield gw


@pytest.fixture
def memory_gateway(tmp_path):
    """The gateway's resource tree on a MemoryStore, in memory (no process, no socket):
    ``memory_gateway.http(...)`` answers at once, ``memory_gateway.rows("events")``."""
    with MemoryGateway(tmp_path) as gw:
        yield gw


@pytest.fixture
def gateway_factory(tmp_path):
    """Start gateways with config overrides: ``gateway_factory({"IPMode": "none"})``."""
    started = []

    def start(overrides=None, name=None):
        gw = GatewayProcess(tmp_path, overrides, name=name or f"gw{len(started)}")
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.__exit__(None, None, None)


@pytest.fixture
def store(tmp_path):
    """A started embedded (chDB) store in ``tmp_path``, without a gateway."""
    s = EmbeddedStore(tmp_path, reactor)
    pytest_twisted.blockon(s.start())
    yield s
    pytest_twisted.blockon(s.stop())


@pytest.fixture
def duckdb_store(tmp_path):
    """A started DuckDB store on ``tmp_path/sfpla.duckdb``, without a gateway."""
    from sfpltracker.store.duckdb.store import DuckDBStore

    s = DuckDBStore(tmp_path / "sfpla.duckdb", tmp_path, reactor)
    pytest_twisted.blockon(s.start())
    yield s
    pytest_twisted.blockon(s.stop())
