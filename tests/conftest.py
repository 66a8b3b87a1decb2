"""Fixtures shared by the whole suite: real Redis servers and a seeded store."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from creditgate.core.config import RedisSettings
from creditgate.kong.gate import NOTICES
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.redis_servers import RedisServer


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
    """Operators' notices are said once per process (handler.NOTICES), by the next request: a gate a
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
