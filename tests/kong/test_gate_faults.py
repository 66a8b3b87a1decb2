"""Redis failing under the gate: every request is answered within its timeout, as fault_tolerant says.

Within its timeout, without timing it: a request meets Redis once, never again after a back-off. A
Redis that is down is stood in for by a listener that counts the connections tried; a paused one counts,
once resumed, the commands it was sent.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.core.test_decision import validate_problem
from tests.counting_listener import CountingListener
from tests.gate_fixtures import through_gate
from tests.harness import KongRequest, KongSide, Outcome
from tests.redis_servers import RedisServer

ACCOUNT = {"id": "acme", "username": "acme", "custom_id": None}
TIMEOUT_MS = 150


@pytest.fixture
def redis_timeout_ms() -> int:
    return TIMEOUT_MS


def request(kong: KongSide, settings: RedisSettings, **config: Any) -> Outcome:
    # Each request here must meet Redis itself: the circuit breaker, which answers without Redis after
    # repeated failures, is off here and tested in test_breaker.py.
    config.setdefault("breaker_failures", 0)
    return through_gate(kong, settings, KongRequest(consumer=ACCOUNT), clean=False, **config)


def balance(settings: RedisSettings) -> int:
    store = RedisStore.from_settings(settings)
    try:
        return store.account_state("acme").balance
    finally:
        store.close()


def test_redis_down_refuses_with_503_within_the_timeout_and_charging_resumes_after(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    assert request(kong, own_settings).proxied
    own_redis.stop()
    for _ in range(5):
        outcome = request(kong, own_settings)
        assert outcome.status == 503
        body = json.loads(outcome.body)
        validate_problem(body)
        assert body["reason"] == "store_unavailable"
        assert outcome.headers["Retry-After"] == "1"
        assert any("store unavailable" in line for line in outcome.logs("err"))
    with CountingListener.tcp(own_redis.port) as listener:  # where Redis was: it counts what was tried
        closed = [request(kong, own_settings) for _ in range(3)]
    assert [outcome.status for outcome in closed] == [503, 503, 503]
    # One connection per request (none tried again after a back-off), and in the background the voids of
    # the charges whose connection closed after the send (store/voids.py): the listener took them.
    assert listener.attempts >= 3
    own_redis.start()
    funded.grant("acme", 1)  # the restarted Redis is empty: re-seed it
    funded.apply_plan(Plan("pro"))
    funded.subscribe("acme", "pro", starts_at=funded.now() - 10)
    assert request(kong, own_settings).proxied
    assert balance(own_settings) == 0


def test_redis_down_with_fault_tolerant_proxies_unmetered_and_logs_it(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    own_redis.stop()
    outcome = request(kong, own_settings, fault_tolerant=True)
    assert outcome.proxied
    assert outcome.upstream_headers.get("X-Credit-Plan") == ""
    assert any("UNMETERED" in line for line in outcome.logs("warn"))
    with CountingListener.tcp(own_redis.port) as listener:
        assert request(kong, own_settings, fault_tolerant=True).proxied
    assert listener.attempts == 1  # Redis was tried once before the request went through unmetered


def test_a_paused_redis_answers_every_request_within_the_read_timeout(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    assert request(kong, own_settings).proxied
    outcomes, sent = own_redis.while_paused(lambda: [request(kong, own_settings) for _ in range(3)])
    assert [outcome.status for outcome in outcomes] == [503, 503, 503]
    # One charge per request, none sent again, so each request waited for one read timeout at most.
    # Run once Redis resumed, past its deadline, each charge script read Redis's clock and stopped: three
    # TIMEs are three charges. The rest is the voids of those charges (store/voids.py: void.lua reads no
    # clock), sent in the background on a connection of their own.
    assert sent["time"] == 3 and sent["evalsha"] >= 3
    assert request(kong, own_settings).proxied


def test_charges_that_redis_runs_after_the_gate_gave_up_are_not_applied(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    assert request(kong, own_settings).proxied  # the gate learns Redis's clock
    own_redis.pause()
    try:
        refused = [request(kong, own_settings).status for _ in range(3)]
    finally:
        own_redis.resume()
    assert refused == [503, 503, 503]
    # The three charges reach Redis only now, after their deadline: none is applied.
    assert request(kong, own_settings).proxied
    assert balance(own_settings) == 1000 - 2
    charges = [e for e in funded.store.ledger("acme") if e.fields["kind"] == "charge"]
    assert len(charges) == 2
