"""The circuit breaker: a Redis outage costs a few timeouts, then every request is answered at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.policy import ChargeRequest
from creditgate.errors import StoreError, StoreTimeout, StoreUnavailable
from creditgate.kong.gate import Gate
from creditgate.ops.admin import Admin
from creditgate.store.breaker import BreakerState, CircuitBreaker
from creditgate.store.store import RedisStore
from tests.gate_fixtures import gate_config
from tests.harness import KongRequest, KongSide, Outcome
from tests.kong.test_gate_clock import StandInKong
from tests.redis_servers import RedisServer, wait_until

TIMEOUT_MS = 300
# Longer than the tests through the plugin server keep the circuit open (a probe after it would be
# counted as sent); the tests that pass the cool-down move a fake clock.
COOLDOWN_MS = 10_000

T = TypeVar("T")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 3, cooldown_ms: int = 1000) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(failures, cooldown_ms, clock=clock), clock


# The state machine, on a clock the test moves.


def test_opens_after_the_threshold_of_consecutive_failures() -> None:
    b, _ = breaker(failures=3)
    for _ in range(2):
        assert b.allow()
        b.failed()
    assert b.state is BreakerState.CLOSED
    assert b.allow()
    b.failed()
    assert b.state is BreakerState.OPEN  # type: ignore[comparison-overlap]  # b.failed() moved it
    assert not b.allow()


def test_a_success_resets_the_count_of_failures() -> None:
    b, _ = breaker(failures=3)
    b.failed()
    b.failed()
    b.succeeded()
    b.failed()
    b.failed()
    assert b.state is BreakerState.CLOSED


def test_refuses_every_call_until_the_cooldown_is_over() -> None:
    b, clock = breaker(failures=1, cooldown_ms=1000)
    b.failed()
    clock.now += 0.999
    assert not b.allow()
    assert b.retry_after_ms() == 1


def test_after_the_cooldown_lets_exactly_one_probe_through() -> None:
    b, clock = breaker(failures=1)
    b.failed()
    clock.now += 1
    assert b.allow()
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allow()
    assert not b.allow()


def test_a_successful_probe_closes_the_circuit() -> None:
    b, clock = breaker(failures=1)
    b.failed()
    clock.now += 1
    assert b.allow()
    b.succeeded()
    assert b.state is BreakerState.CLOSED
    assert all(b.allow() for _ in range(5))


def test_a_failed_probe_opens_the_circuit_for_another_cooldown() -> None:
    b, clock = breaker(failures=3)
    for _ in range(3):
        b.failed()
    clock.now += 1
    assert b.allow()
    b.failed()
    assert b.state is BreakerState.OPEN
    clock.now += 0.5
    assert not b.allow()
    clock.now += 0.5
    assert b.allow()


def test_zero_failures_turns_the_breaker_off() -> None:
    b, _ = breaker(failures=0)
    for _ in range(100):
        b.failed()
    assert b.allow() and b.state is BreakerState.CLOSED


def test_tells_each_transition_once() -> None:
    changes: list[tuple[str, str]] = []
    clock = FakeClock()
    b = CircuitBreaker(2, 1000, clock=clock, on_change=lambda old, new, _: changes.append((old, new)))
    for _ in range(5):
        b.failed()
    clock.now += 1
    b.allow()
    b.succeeded()
    assert changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_a_hundred_threads_at_the_end_of_the_cooldown_send_one_probe() -> None:
    b, clock = breaker(failures=1)
    b.failed()
    clock.now += 1
    start = threading.Barrier(100)
    allowed: list[bool] = []

    def race() -> None:
        start.wait()
        allowed.append(b.allow())

    threads = [threading.Thread(target=race) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 1


# The store in front of a real Redis that stops answering.


@pytest.fixture
def redis_timeout_ms() -> int:
    return TIMEOUT_MS


def while_paused(server: RedisServer, requests: Callable[[], list[T]]) -> tuple[list[T], int]:
    """``requests`` run against the paused server, and how many commands they sent it."""
    answers, sent = server.while_paused(requests)
    return answers, sent.total()


def charge_error(store: RedisStore) -> type[BaseException] | None:
    try:
        store.charge(ChargeRequest("acme", 1, now=int(time.time())))
    except StoreError as failure:
        return type(failure)
    return None


def test_store_stops_waiting_on_a_paused_redis_after_the_threshold(
    own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    store = RedisStore.from_settings(own_settings, breaker=CircuitBreaker(3, 10_000))
    assert charge_error(store) is None
    waited, sent = while_paused(own_redis, lambda: [charge_error(store) for _ in range(3)])
    assert store.voider.drain(timeout=10)  # the three charges' voids (not through the breaker)
    fast, sent_while_open = while_paused(own_redis, lambda: [charge_error(store) for _ in range(20)])
    assert waited == [StoreTimeout] * 3 and sent >= len(waited)
    assert set(fast) == {StoreUnavailable}
    assert sent_while_open == 0
    store.close()


def test_error_replies_from_redis_do_not_open_the_circuit(
    own_settings: RedisSettings, funded: Admin, own_redis: RedisServer
) -> None:
    store = RedisStore.from_settings(own_settings, breaker=CircuitBreaker(2, 10_000))
    with own_redis.client() as client:
        client.set(store.keys.account("broken").state, "not a hash")
    for _ in range(5):
        with pytest.raises(StoreError, match="WRONGTYPE"):
            store.account_state("broken")
    assert store.breaker is not None and store.breaker.state is BreakerState.CLOSED
    assert charge_error(store) is None
    store.close()


# Through the real plugin server.


def request(kong: KongSide, settings: RedisSettings, **config: object) -> Outcome:
    plugin = gate_config(settings, breaker_failures=3, breaker_cooldown_ms=COOLDOWN_MS, **config)
    return kong.request(plugin, KongRequest(consumer={"id": "acme", "username": "acme"}))


class Voids:
    """Charges that timed out, voided by the plugin server one by one and retried outside the circuit
    breaker (store/voids.py): what it sends must not be counted as sent through the open circuit, so a
    test waits until the last one is settled. Each charge then has its token (it ran; the balance has it
    back) or its void marker (it never will run)."""

    def __init__(self, server: RedisServer, admin: Admin) -> None:
        self.server, self.admin = server, admin
        self.balance = admin.account("acme").balance
        self.marked = self._marked()

    def _marked(self) -> int:
        keys = self.admin.store.keys.account("acme")
        with self.server.client() as client:
            return sum(1 for pattern in (keys.token("*"), keys.void("*")) for _ in client.scan_iter(pattern))

    def wait_settled(self, charges: int) -> None:
        wait_until(
            lambda: (
                self._marked() == self.marked + charges and self.admin.account("acme").balance == self.balance
            ),
            10,
            f"the voids of {charges} charges that timed out",
        )


def test_gate_answers_503_at_once_while_the_circuit_is_open(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    assert request(kong, own_settings).proxied
    voids = Voids(own_redis, funded)
    slow, sent = while_paused(own_redis, lambda: [request(kong, own_settings) for _ in range(3)])
    voids.wait_settled(len(slow))
    fast, sent_while_open = while_paused(own_redis, lambda: [request(kong, own_settings) for _ in range(10)])
    assert all(o.status == 503 for o in slow) and sent >= len(slow)
    assert all(o.status == 503 for o in fast)
    assert {json.loads(o.body)["reason"] for o in fast} == {"store_unavailable"}
    assert any("circuit open" in line for line in fast[0].logs("err"))
    assert sent_while_open == 0


def test_an_open_circuit_tells_the_client_to_retry_once_the_cool_down_is_over(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    plugin = gate_config(own_settings, breaker_failures=2, breaker_cooldown_ms=5_000)
    acme = KongRequest(consumer={"id": "acme", "username": "acme"})
    own_redis.pause()
    try:
        waited = [kong.request(plugin, acme) for _ in range(2)]
        refused = kong.request(plugin, acme)
    finally:
        own_redis.resume()
    assert [o.headers.get("Retry-After") for o in waited] == ["1", "1"]  # timeouts: the circuit was closed
    assert refused.status == 503 and refused.headers.get("Retry-After") in {"4", "5"}


def test_fault_tolerant_gate_passes_requests_through_at_once_while_the_circuit_is_open(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    def passed(count: int) -> list[Outcome]:
        return [request(kong, own_settings, fault_tolerant=True) for _ in range(count)]

    _, sent = while_paused(own_redis, lambda: passed(3))
    fast, sent_while_open = while_paused(own_redis, lambda: passed(5))
    assert sent >= 3
    assert all(o.proxied for o in fast)
    assert all(any("UNMETERED" in line for line in o.logs("warn")) for o in fast)
    assert sent_while_open == 0


# The cool-down, on a clock the test moves: the gate in this process, driven through a stand-in for
# the PDK (test_gate_clock.py), so that only a paused Redis's timeouts are waited for.


class Answer:
    """What the gate in this process told Kong about one request."""

    def __init__(self, gate: Gate) -> None:
        kong = StandInKong({"id": "acme", "username": "acme"})
        ended = gate.access(kong)
        self.proxied = not ended
        exits = kong.sent("kong.response.exit")
        self.status = exits[0][0] if exits else 200


def gate_on(settings: RedisSettings, clock: FakeClock) -> Gate:
    raw = gate_config(settings, breaker_failures=3, breaker_cooldown_ms=COOLDOWN_MS).config
    return Gate(raw, breaker_clock=clock)


def test_after_the_cooldown_a_probe_finds_redis_back_and_charging_resumes(
    own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    clock = FakeClock()
    gate = gate_on(own_settings, clock)
    own_redis.pause()
    try:
        for _ in range(3):
            Answer(gate)
        assert Answer(gate).status == 503
    finally:
        own_redis.resume()
    # Redis is back, but the circuit stays open until the cool-down is over.
    assert Answer(gate).status == 503
    clock.now += COOLDOWN_MS / 1000
    balance = funded.account("acme").balance
    for _ in range(3):
        assert Answer(gate).proxied
    assert funded.account("acme").balance == balance - 3


def test_a_probe_that_fails_keeps_the_gate_answering_at_once_for_another_cooldown(
    own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    clock = FakeClock()
    gate = gate_on(own_settings, clock)
    _, sent = while_paused(own_redis, lambda: [Answer(gate) for _ in range(3)])
    clock.now += COOLDOWN_MS / 1000
    probe, sent_by_probe = while_paused(own_redis, lambda: [Answer(gate)])
    after, sent_after = while_paused(own_redis, lambda: [Answer(gate) for _ in range(5)])
    assert sent >= 3
    assert probe[0].status == 503 and sent_by_probe >= 1
    assert all(o.status == 503 for o in after)
    assert sent_after == 0
