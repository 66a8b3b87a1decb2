"""A request's usage is counted to the UTC day of the clock that decides it: Redis's, not the
gateway node's. Two nodes whose clocks disagree near midnight would otherwise split one day's
usage over two days."""

from __future__ import annotations

import time

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore

DAY = 86_400


def test_a_node_a_day_ahead_counts_its_requests_to_redis_s_day(
    settings: RedisSettings, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin.apply_plan(Plan("prepaid"))
    admin.subscribe("acme", "prepaid", starts_at=0)
    admin.grant("acme", 10)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + DAY)  # this node's clock: a day ahead
    skewed = RedisStore.from_settings(settings)
    try:
        assert skewed.charge(ChargeRequest("acme", 1)).allowed  # Redis's clock decides (no `now`)
    finally:
        skewed.close()
        monkeypatch.undo()
    redis_day = int(admin.store.client.time()[0])
    assert admin.store.usage("acme", redis_day) == {"global|requests": 1, "global|credits": 1}
    assert admin.store.usage("acme", redis_day + DAY) == {}
