"""Periods under hostile clocks: a future billing anchor, and gateway nodes whose clocks disagree.

A period is decided by one clock (Redis's, unless a caller names a time) and never moves backwards;
the period that holds "now" is found in the anchor's lattice, before the anchor as after it.
"""

from __future__ import annotations

import time

from creditgate.core.model import Plan
from creditgate.core.periods import DAY_SECONDS, Period
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.conftest import Clock


def resets(store: RedisStore, account: str) -> int:
    return sum(1 for e in store.ledger(account) if e.fields["kind"] == "period_reset")


def test_a_future_anchor_gives_the_allowance_once_not_on_every_request(
    admin: Admin, store: RedisStore
) -> None:
    # The anchor is the next renewal date a billing system sends: 20 days ahead, the start an hour ago.
    admin.clock = time.time
    now = admin.now()
    admin.apply_plan(Plan("free", period=Period.MONTH, allowance=10, prepaid=False))
    admin.subscribe("acme", "free", starts_at=now - 3600, anchor=now + 20 * DAY_SECONDS)
    allowed = sum(store.charge(ChargeRequest("acme", 1)).allowed for _ in range(100))  # Redis's clock decides
    assert allowed == 10
    assert resets(store, "acme") == 1
    state = store.account_state("acme")
    assert state.period_start <= now < state.period_end == now + 20 * DAY_SECONDS


def test_a_future_anchor_from_the_import_path_is_the_same(
    admin: Admin, store: RedisStore, clock: Clock
) -> None:
    admin.apply_plan(Plan("free", period=Period.DAY, allowance=3, prepaid=False))
    admin.import_account(
        "acme", plan="free", starts_at=clock.now - 60, anchor=clock.now + 5 * DAY_SECONDS + 3600
    )
    results = [store.charge(ChargeRequest("acme", 1, now=clock.now + i)) for i in range(20)]
    assert sum(r.allowed for r in results) == 3
    assert results[0].period_start == clock.now + 3600 - DAY_SECONDS
    assert resets(store, "acme") == 1


def test_two_nodes_one_second_apart_at_a_period_boundary_get_one_allowance(
    admin: Admin, store: RedisStore, clock: Clock
) -> None:
    admin.apply_plan(Plan("daily", period=Period.DAY, allowance=10, prepaid=False))
    admin.subscribe("acme", "daily", starts_at=clock.now)
    end = clock.now + DAY_SECONDS
    assert (
        sum(store.charge(ChargeRequest("acme", 1, now=end - 100)).allowed for _ in range(12)) == 10
    )  # used up
    # Node A's clock is one second behind node B's; their requests alternate across the boundary.
    allowed = sum(store.charge(ChargeRequest("acme", 1, now=end - 1 + i % 2)).allowed for i in range(200))
    assert allowed == 10  # the new day's allowance, once
    assert resets(store, "acme") == 2  # the first day's and the second's: never back and forth
    assert store.account_state("acme").period_start == end


def test_a_clock_behind_the_current_period_is_counted_in_it(
    admin: Admin, store: RedisStore, clock: Clock
) -> None:
    admin.apply_plan(Plan("daily", period=Period.DAY, allowance=5, prepaid=False))
    admin.subscribe("acme", "daily", starts_at=clock.now - 3 * DAY_SECONDS)
    assert store.charge(ChargeRequest("acme", 5, now=clock.now + 10)).allowed
    late = store.charge(ChargeRequest("acme", 1, now=clock.now - DAY_SECONDS))  # a node a day behind
    assert not late.allowed and late.period_start == clock.now
    assert store.account_state("acme").period_start == clock.now
