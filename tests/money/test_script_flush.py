"""A SCRIPT FLUSH between the reload and the resend of a charge: the script still reaches Redis.

NOSCRIPT means the script did not run, so it is loaded and sent again; flushed again before that
second send, it is sent whole (EVAL), which no flush can refuse. Twice flushed within one request's
reload-and-resend was answered 503 store_unavailable while Redis was up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.store.hot_path import HotPath
from creditgate.store.store import RedisStore, _script_source
from creditgate.store.topology import connect
from tests.conftest import Clock


@pytest.fixture
def store(settings: RedisSettings, redis_client: redis.Redis) -> Iterator[RedisStore]:
    """This module's store: its hot path's every reload of the script is followed by another flush."""
    source = _script_source("charge")

    def load_then_flushed_again() -> str:
        sha: str = redis_client.script_load(source)
        redis_client.script_flush()  # another flush lands before the resend
        return sha

    hot_path = HotPath(settings, redis_client.register_script(source).sha, load_then_flushed_again, source)
    store = RedisStore(connect(settings), timeout_ms=settings.read_timeout, hot_path=hot_path)
    yield store
    store.close()


def seed(admin: Admin) -> None:
    admin.apply_plan(Plan("pro"))
    admin.subscribe("acme", "pro")
    admin.grant("acme", 10)


def test_the_hot_path_charges_when_scripts_are_flushed_again_after_the_reload(
    settings: RedisSettings, redis_client: redis.Redis, admin: Admin, store: RedisStore, clock: Clock
) -> None:
    seed(admin)
    assert store.hot_path is not None
    redis_client.script_flush()
    result = store.charge(ChargeRequest("acme", 1, now=clock.now))
    assert result.allowed and store.account_state("acme").balance == 9


class FlushingClient(redis.Redis):
    """A real client to the test's Redis whose every SCRIPT LOAD is followed by another flush."""

    def script_load(self, script: Any) -> str:
        sha: str = super().script_load(script)
        self.script_flush()
        return sha


def test_the_redis_py_path_charges_when_scripts_are_flushed_again_after_the_reload(
    settings: RedisSettings, redis_client: redis.Redis, admin: Admin, clock: Clock
) -> None:
    seed(admin)
    client = FlushingClient(port=settings.port)
    store = RedisStore(client, timeout_ms=1000)  # no hot path: redis-py's EVALSHA, as on TLS, Sentinel
    try:
        redis_client.script_flush()
        assert store.charge(ChargeRequest("acme", 1, now=clock.now)).allowed
        assert store.account_state("acme").balance == 9
    finally:
        store.close()
