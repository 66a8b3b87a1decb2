"""Redis failing under the gate: every request is answered within its timeout, as fault_tolerant says."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.core.test_decision import validate_problem
from tests.gate_fixtures import through_gate
from tests.harness import KongRequest, KongSide, Outcome
from tests.redis_servers import RedisServer

ACCOUNT = {"id": "acme", "username": "acme", "custom_id": None}
TIMEOUT_MS = 150
MARGIN_S = 0.35


@pytest.fixture
def redis_timeout_ms() -> int:
    return TIMEOUT_MS


def timed(kong: KongSide, settings: RedisSettings, **config: Any) -> tuple[Outcome, float]:
    # Each request here must meet Redis itself: the circuit breaker, which answers without Redis after
    # repeated failures, is off here and tested in test_breaker.py.
    config.setdefault("breaker_failures", 0)
    started = time.monotonic()
    outcome = through_gate(kong, settings, KongRequest(consumer=ACCOUNT), clean=False, **config)
    return outcome, time.monotonic() - started


def balance(settings: RedisSettings) -> int:
    store = RedisStore.from_settings(settings)
    try:
        return store.account_state("acme").balance
    finally:
        store.close()


def test_redis_down_refuses_with_503_within_the_timeout_and_charging_resumes_after(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    assert timed(kong, own_settings)[0].proxied
    own_redis.stop()
    for _ in range(5):
        outcome, elapsed = timed(kong, own_settings)
        assert outcome.status == 503
        body = json.loads(outcome.body)
        validate_problem(body)
        assert body["reason"] == "store_unavailable"
        assert outcome.headers["Retry-After"] == "1"
        assert elapsed < TIMEOUT_MS / 1000 + MARGIN_S
        assert any("store unavailable" in line for line in outcome.logs("err"))
    own_redis.start()
    funded.grant("acme", 1)  # the restarted Redis is empty: re-seed it
    funded.apply_plan(Plan("pro"))
    funded.subscribe("acme", "pro", starts_at=funded.now() - 10)
    assert timed(kong, own_settings)[0].proxied
    assert balance(own_settings) == 0


def test_redis_down_with_fault_tolerant_proxies_unmetered_and_logs_it(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    own_redis.stop()
    outcome, elapsed = timed(kong, own_settings, fault_tolerant=True)
    assert outcome.proxied
    assert elapsed < TIMEOUT_MS / 1000 + MARGIN_S
    assert outcome.upstream_headers.get("X-Credit-Plan") == ""
    assert any("UNMETERED" in line for line in outcome.logs("warn"))


def test_a_paused_redis_answers_every_request_within_the_read_timeout(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    assert timed(kong, own_settings)[0].proxied
    own_redis.pause()
    try:
        for _ in range(3):
            outcome, elapsed = timed(kong, own_settings)
            assert outcome.status == 503
            assert elapsed < TIMEOUT_MS / 1000 + MARGIN_S
    finally:
        own_redis.resume()
    assert timed(kong, own_settings)[0].proxied


def test_charges_that_redis_runs_after_the_gate_gave_up_are_not_applied(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    assert timed(kong, own_settings)[0].proxied  # the gate learns Redis's clock
    own_redis.pause()
    try:
        refused = [timed(kong, own_settings)[0].status for _ in range(3)]
    finally:
        own_redis.resume()
    assert refused == [503, 503, 503]
    # The three charges reach Redis only now, after their deadline: none is applied.
    assert timed(kong, own_settings)[0].proxied
    assert balance(own_settings) == 1000 - 2
    charges = [e for e in funded.store.ledger("acme") if e.fields["kind"] == "charge"]
    assert len(charges) == 2
