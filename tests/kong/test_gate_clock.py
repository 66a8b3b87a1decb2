"""The gate with a clock of the test's own: time-bound rules (a hold's settle timeout, a period's
renewal) checked against a real Redis without waiting on the wall clock.

``Gate`` runs in this process, driven through a stand-in for the PDK object that answers as Kong
would (the end-to-end tests drive the real plugin server through Kong's protocol).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import DAY_SECONDS, Period
from creditgate.kong.gate import Gate
from creditgate.ops.admin import Admin
from tests.conftest import Clock

ACME = {"id": "acme", "username": "acme", "custom_id": None, "tags": None}


class _Calls:
    def __init__(self, kong: StandInKong, prefix: str) -> None:
        self._kong, self._prefix = kong, prefix

    def __getattr__(self, name: str) -> Any:
        return self._kong.answer(f"{self._prefix}.{name}")


class StandInKong:
    """One request's PDK: the consumer, the upstream's response, ``kong.ctx.shared``, and the calls."""

    def __init__(self, consumer: Any, *, status: int = 200, response_headers: dict[str, str] | None = None):
        self.consumer, self.status = consumer, status
        self.response_headers = response_headers or {}
        self.shared: dict[str, Any] = {}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return _Calls(self, f"kong.{name}")

    def answer(self, path: str) -> Any:
        if path in ("kong.service.request", "kong.ctx.shared"):
            return _Calls(self, path)

        def call(*args: Any) -> Any:
            self.calls.append((path, args))
            if path == "kong.client.get_consumer":
                return self.consumer
            if path == "kong.ctx.shared.set":
                self.shared[args[0]] = args[1]
            if path == "kong.ctx.shared.get":
                return self.shared.get(args[0])
            if path == "kong.response.get_status":
                return self.status
            if path == "kong.response.get_header":
                return self.response_headers.get(args[0])
            return None

        return call

    def sent(self, path: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.calls if name == path]

    def logs(self, level: str) -> list[str]:
        return [str(args[0]) for args in self.sent(f"kong.log.{level}")]


def plugin(settings: RedisSettings, **config: Any) -> dict[str, Any]:
    redis = {"host": settings.host, "port": settings.port, "connect_timeout": 1000, "read_timeout": 1000}
    return {"redis": redis, "route_id": "route-1", **config}


@pytest.fixture
def prepaid(admin: Admin) -> Admin:
    admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=0, prepaid=True))
    admin.subscribe("acme", "pro", starts_at=admin.now() - 60)
    admin.grant("acme", 100)
    return admin


def request(gate: Gate, **response: Any) -> StandInKong:
    """A request through the gate's access phase, then its log phase on the same PDK object."""
    kong = StandInKong(ACME, **response)
    gate.access(kong)
    gate.log(kong)
    return kong


def test_a_hold_settled_in_time_gives_back_the_difference(
    settings: RedisSettings, prepaid: Admin, clock: Clock
) -> None:
    gate = Gate(plugin(settings, cost=50, settle_header="X-Usage-Cost"), log_phase=True, clock=clock)
    kong = request(gate, response_headers={"X-Usage-Cost": "12"})
    assert kong.sent("kong.response.exit") == []
    assert prepaid.account("acme").balance == 88


def test_a_hold_not_settled_within_the_settle_timeout_is_final_without_waiting(
    settings: RedisSettings, prepaid: Admin, clock: Clock
) -> None:
    gate = Gate(
        plugin(settings, cost=50, settle_header="X-Usage-Cost", settle_timeout=1), log_phase=True, clock=clock
    )
    kong = StandInKong(ACME, response_headers={"X-Usage-Cost": "1"})
    gate.access(kong)
    clock.now += 2  # the response came after settle_timeout
    gate.log(kong)
    assert prepaid.account("acme").balance == 50
    assert any("late" in line for line in kong.logs("warn"))


def test_a_refund_is_given_within_a_day_and_not_after(
    settings: RedisSettings, prepaid: Admin, clock: Clock
) -> None:
    gate = Gate(plugin(settings, cost=10, refund_on_failure=True), log_phase=True, clock=clock)
    request(gate, status=502)
    assert prepaid.account("acme").balance == 100
    kong = StandInKong(ACME, status=502)
    gate.access(kong)
    clock.now += DAY_SECONDS + 1
    gate.log(kong)
    assert prepaid.account("acme").balance == 90
    assert any("late" in line for line in kong.logs("warn"))


def test_an_allowance_used_up_today_is_renewed_by_the_next_period(
    settings: RedisSettings, admin: Admin, clock: Clock
) -> None:
    admin.apply_plan(Plan("daily", period=Period.DAY, allowance=2, prepaid=False))
    admin.subscribe("acme", "daily", starts_at=admin.now())
    gate = Gate(plugin(settings), clock=clock)
    answers = [request(gate) for _ in range(3)]
    assert [len(k.sent("kong.response.exit")) for k in answers] == [0, 0, 1]
    status, _, headers = answers[-1].sent("kong.response.exit")[0]
    assert status == 402 and headers["Retry-After"] == str(DAY_SECONDS)
    clock.now += DAY_SECONDS
    assert request(gate).sent("kong.response.exit") == []


def test_a_gate_given_a_clock_decides_with_it_and_one_without_with_redis_clock(
    settings: RedisSettings, admin: Admin, clock: Clock
) -> None:
    clock.now = int(time.time()) + DAY_SECONDS  # a day ahead of Redis's clock
    admin.apply_plan(Plan("pro", prepaid=True))
    admin.subscribe("acme", "pro", starts_at=clock.now - 60)  # started, by the test's clock only
    admin.grant("acme", 100)
    refused = request(Gate(plugin(settings))).sent("kong.response.exit")
    assert [(status, json.loads(body)["reason"]) for status, body, _ in refused] == [
        (402, "subscription_inactive")
    ]
    assert request(Gate(plugin(settings), clock=clock)).sent("kong.response.exit") == []
    assert admin.account("acme").balance == 99
