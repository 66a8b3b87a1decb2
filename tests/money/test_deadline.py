"""Answered 503, never charged: every charge carries a deadline on Redis's clock, from the first one.

The gate learns Redis's clock before its first charge (one TIME call per store) and bounds the error
of what it learnt by the round trip; a charge Redis runs after the gate gave up writes nothing, however
slow the round trips and however fresh the plugin server.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.store.clock import RedisClock
from tests.gate_fixtures import gate_config, start_plugin_server
from tests.harness import KongRequest, KongSide, PluginInfo
from tests.redis_servers import RedisServer

ACCOUNT = {"id": "acme", "username": "acme", "custom_id": None}


@pytest.fixture
def redis_timeout_ms() -> int:
    return 150


def test_a_fresh_plugin_server_facing_a_paused_redis_answers_503_and_charges_nothing(
    own_redis: RedisServer, own_settings: RedisSettings, funded: Admin, plugin_info: PluginInfo
) -> None:
    assert funded.store.charge(ChargeRequest("acme", 1)).allowed  # Redis knows the charge script
    server = start_plugin_server()  # has never heard from Redis: its clock is unknown
    try:
        own_redis.pause()
        try:
            with KongSide(server.socket_path, plugin_info, timeout=10.0) as kong:
                config = gate_config(own_settings, breaker_failures=0)  # every request meets Redis
                statuses = [kong.request(config, KongRequest(consumer=ACCOUNT)).status for _ in range(20)]
        finally:
            own_redis.resume()
        assert statuses == [503] * 20
        time.sleep(0.5)  # whatever was sent while paused has run by now
        assert funded.account("acme").balance == 999
        assert len([e for e in funded.store.ledger("acme") if e.fields["kind"] == "charge"]) == 1
    finally:
        server.stop()
        shutil.rmtree(Path(server.socket_path).parent, ignore_errors=True)


def test_a_slow_round_trip_still_gives_a_deadline_shortened_by_its_uncertainty() -> None:
    clock = RedisClock()
    sent = 1_000_000.0
    clock.observe(redis_ms=5_000_030, sent_ms=sent, received_ms=sent + 60)  # 60 ms round trip
    offset = 5_000_030 - (sent + 30)
    deadline = clock.deadline(sent + 100, 120)
    assert deadline > 0
    # Redis's clock is known within half the round trip (and 1 ms of truncation): the deadline keeps
    # that much before the time the caller stops waiting.
    assert deadline <= sent + 100 + offset + 120 - 30


def test_a_more_precise_sample_replaces_a_rough_one_and_a_contradicting_one_wins() -> None:
    clock = RedisClock()
    clock.observe(redis_ms=10_040, sent_ms=0, received_ms=80)
    rough = clock.error_ms(80)
    clock.observe(redis_ms=10_101, sent_ms=100, received_ms=102)
    assert clock.error_ms(102) < rough
    assert clock.offset_ms == 10_101 - 101
    clock.observe(redis_ms=50_000, sent_ms=200, received_ms=202)  # Redis's clock was stepped
    assert clock.offset_ms == 50_000 - 201


def test_without_a_known_clock_no_charge_is_sent_without_a_deadline() -> None:
    from creditgate.errors import StoreTimeout

    with pytest.raises(StoreTimeout):
        RedisClock().deadline(1_000.0, 100)
