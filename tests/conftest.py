"""Fixtures shared by the whole suite: real Redis servers and a seeded store; the ``server`` mark."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, NoReturn

import pytest
import redis
from redis.cluster import RedisCluster

from creditgate.core.config import RedisSettings
from creditgate.kong.notices import NOTICES
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.redis_servers import RedisClusterServers, RedisServer

# Fixtures that start a server (a redis-server, the plugin server, or its --dump): a test that uses one,
# directly or through another fixture, is marked ``server``. A module whose tests start servers of
# their own says so with ``pytestmark = pytest.mark.server``.
SERVER_FIXTURES = frozenset(
    {
        "redis_server",
        "redis_cluster",
        "cluster",
        "own_redis",
        "plugin_server",
        "plugin_info",
        "settling_server",
        "settling_info",
    }
)

# Set by `make test-fast` (which runs `-m "not server"`): a test there that starts a process or listens
# on a socket is mis-marked, and fails saying so instead of making the fast run slow.
NO_SERVERS = os.environ.get("CREDIT_GATE_TESTS_NO_SERVERS") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


def _refuse_server(what: str) -> NoReturn:
    raise RuntimeError(
        f"this test starts a server ({what}) in a run without servers: mark it server "
        "(a fixture in tests/conftest.py's SERVER_FIXTURES, or `pytestmark = pytest.mark.server`)"
    )


def _refuse_process(self: subprocess.Popen[Any], args: Any, *_args: Any, **_kwargs: Any) -> None:
    _refuse_server(f"process {args!r}")


def _refuse_listen(self: socket.socket, *_args: Any) -> None:
    _refuse_server(f"a socket listening on {self.getsockname()!r}")


def pytest_configure(config: pytest.Config) -> None:
    if NO_SERVERS:
        subprocess.Popen.__init__ = _refuse_process  # type: ignore[method-assign]
        socket.socket.listen = _refuse_listen  # type: ignore[method-assign,assignment]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A Redis Cluster of three masters for the whole session: making one takes seconds, and every
    test that needs a plain one can share it (``cluster`` empties it first)."""
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start()
    yield servers
    servers.stop()


@pytest.fixture
def cluster(redis_cluster: RedisClusterServers) -> RedisClusterServers:
    """The session's Redis Cluster with every master flushed: what an earlier test left is gone."""
    with redis_cluster.client() as client:
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    return redis_cluster


@pytest.fixture
def settings(redis_server: RedisServer, redis_client: redis.Redis) -> RedisSettings:
    """Settings of a clean database on the session's Redis (``redis_client`` flushed it)."""
    return RedisSettings(host="127.0.0.1", port=redis_server.port, connect_timeout=1000, read_timeout=1000)


@pytest.fixture
def store(settings: RedisSettings) -> Iterator[RedisStore]:
    store = RedisStore.from_settings(settings)
    yield store
    store.close()


class Clock:
    """A settable clock for the operators' API, so tests choose what "now" is."""

    def __init__(self, now: int = 1_767_225_600) -> None:  # 2026-01-01T00:00:00Z
        self.now = now

    def __call__(self) -> float:
        return float(self.now)


class _Unheard:
    """A Kong log nobody reads: what a test's in-process gate left to say is dropped here."""

    def __getattr__(self, _level: str) -> Any:
        return lambda *_args: None


@pytest.fixture(autouse=True)
def no_notice_left_over() -> Iterator[None]:
    """Operators' notices are said once per process (kong/notices.py), by the next request: a gate a
    test ran in this process must not leave one for the next test's first request to write."""
    yield
    NOTICES.flush(SimpleNamespace(log=_Unheard()))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def admin(store: RedisStore, clock: Clock) -> Admin:
    return Admin(store, clock=clock)


from tests.gate_fixtures import (  # noqa: E402, F401  (shared fixtures)
    funded,
    kong,
    own_redis,
    own_settings,
    plugin_info,
    plugin_server,
)
