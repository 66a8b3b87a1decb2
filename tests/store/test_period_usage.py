"""The period's own counters on a real Redis: what the charge writes beside ``used``, what settling
nets, and the restart counter that tells two periods with the same bounds apart.

``period_requests`` and ``period_from_balance`` (the allowance's part is ``used``) are written by
charge.lua in the step that charges, reset with ``used``, netted by settle.lua while the charge's
period is the current one, and read as strictly as every other field: a value that does not parse is
refused before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import pytest
import redis
from redis.typing import EncodableT, FieldT

from creditgate.core.decision import ChargeResult
from creditgate.core.model import Plan
from creditgate.core.periods import DAY_SECONDS, Period
from creditgate.core.policy import ChargeRequest
from creditgate.errors import StoreDataError
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.conftest import Clock
from tests.money.test_data_errors import NOT_INTEGERS, snapshot

WINDOW = 3600


@pytest.fixture
def daily(admin: Admin, clock: Clock) -> Admin:
    """acme: 5 credits a day included, prepaid use, 20 credits; its day starts at the clock's now."""
    admin.apply_plan(Plan("daily", period=Period.DAY, allowance=5, prepaid=True))
    admin.apply_plan(Plan("free", period=Period.DAY, allowance=5, prepaid=False))
    admin.apply_plan(Plan("once", period=Period.NONE, allowance=7, prepaid=True))
    admin.subscribe("acme", "daily", starts_at=clock.now - 60, anchor=clock.now)
    admin.grant("acme", 20)
    return admin


def charge(store: RedisStore, cost: int, now: int, **options: Any) -> ChargeResult:
    return store.charge(ChargeRequest("acme", cost, now=now, settle_window=WINDOW, **options))


def counters(store: RedisStore) -> tuple[int, int, int]:
    state = store.account_state("acme")
    return state.period_requests, state.used, state.period_from_balance


def test_each_allowed_charge_counts_one_request_and_its_credits_by_where_they_came_from(
    daily: Admin, store: RedisStore, clock: Clock
) -> None:
    for i, cost in enumerate([3, 0, 4, 2]):
        assert charge(store, cost, clock.now + i).allowed
    assert counters(store) == (4, 5, 4)
    assert store.account_state("acme").balance == 16


def test_refusals_replays_and_shadow_mode_count_nothing(
    daily: Admin, store: RedisStore, clock: Clock
) -> None:
    charge(store, 2, clock.now, idempotency_key="k", idempotency_window=60)
    assert charge(store, 2, clock.now + 1, idempotency_key="k", idempotency_window=60).replayed
    assert not charge(store, 999, clock.now + 2).allowed  # insufficient credit
    assert charge(store, 3, clock.now + 3, shadow=True).allowed
    daily.set_member_cap("acme", "ann", 1)
    assert not charge(store, 2, clock.now + 4, member="ann").allowed
    assert counters(store) == (1, 2, 0)


def test_a_new_period_and_a_restart_reset_the_counters_with_used(
    daily: Admin, store: RedisStore, clock: Clock
) -> None:
    charge(store, 7, clock.now)
    assert counters(store) == (1, 5, 2)
    charge(store, 1, clock.now + DAY_SECONDS)
    assert counters(store) == (1, 1, 0)
    restarts = store.account_state("acme").period_restarts
    daily.change_plan("acme", "once")  # another length: the period restarts
    state = store.account_state("acme")
    assert (state.period_requests, state.used, state.period_from_balance) == (0, 0, 0)
    assert state.period_restarts == restarts + 1
    daily.change_plan("acme", "daily")
    daily.change_plan("acme", "free")  # the same length: the period and its counters go on
    assert store.account_state("acme").period_restarts == restarts + 2


def test_a_refund_takes_back_its_request_and_each_credit_from_the_counter_that_paid_it(
    daily: Admin, store: RedisStore, clock: Clock
) -> None:
    charge(store, 4, clock.now)
    second = charge(store, 3, clock.now + 1)  # 1 from the allowance, 2 from the balance
    got = store.settle("acme", second.charge_id, 0, now=clock.now + 2, refund=True, window_seconds=WINDOW)
    assert (got.outcome, got.given_back) == ("applied", 3)
    assert counters(store) == (1, 4, 0)
    third = charge(store, 4, clock.now + 3)  # 1 from the allowance, 3 from the balance
    got = store.settle("acme", third.charge_id, 1, now=clock.now + 4, window_seconds=WINDOW)
    assert (got.outcome, got.given_back) == ("applied", 3)
    assert counters(store) == (2, 5, 0)  # settled lower, still a request: 3 back to the balance


def test_a_settlement_in_a_later_period_nets_nothing_from_it(
    daily: Admin, store: RedisStore, clock: Clock
) -> None:
    first = charge(store, 7, clock.now)
    charge(store, 6, clock.now + DAY_SECONDS)
    got = store.settle(
        "acme",
        first.charge_id,
        0,
        now=clock.now + DAY_SECONDS + 1,
        refund=True,
        window_seconds=2 * DAY_SECONDS,
    )
    assert (got.outcome, got.given_back) == ("applied", 2)
    assert counters(store) == (1, 5, 1)


def test_a_pool_members_requests_are_counted_per_period_beside_its_use(
    daily: Admin, store: RedisStore, clock: Clock, redis_client: redis.Redis
) -> None:
    members = store.keys.account("acme").members
    first = charge(store, 2, clock.now, member="ann")
    charge(store, 0, clock.now + 1, member="ann")
    charge(store, 1, clock.now + 2, member="bob")
    r = store.account_state("acme").period_restarts  # "<period restarts>:<period start>:<n>"
    assert redis_client.hget(members, "requests:ann") == f"{r}:{clock.now}:2".encode()
    assert redis_client.hget(members, "used:ann") == f"{r}:{clock.now}:2".encode()
    store.settle("acme", first.charge_id, 0, now=clock.now + 3, refund=True, window_seconds=WINDOW)
    assert redis_client.hget(members, "requests:ann") == f"{r}:{clock.now}:1".encode()
    assert redis_client.hget(members, "requests:bob") == f"{r}:{clock.now}:1".encode()
    charge(store, 1, clock.now + DAY_SECONDS, member="ann")
    assert redis_client.hget(members, "requests:ann") == f"{r}:{clock.now + DAY_SECONDS}:1".encode()


def test_a_restart_between_two_plans_without_periods_gives_nothing_back_to_the_new_allowance(
    daily: Admin, store: RedisStore, clock: Clock
) -> None:
    """A plan without periods, another plan, then one without periods again: both periods start at
    0, so only the restart counter the charge recorded tells them apart."""
    daily.change_plan("acme", "once")
    first = charge(store, 2, clock.now)
    assert first.from_allowance == 2
    daily.change_plan("acme", "daily")
    charge(store, 1, clock.now + 1)
    daily.change_plan("acme", "once")
    charge(store, 3, clock.now + 2)  # the new period's allowance: 3 of 7 used
    got = store.settle("acme", first.charge_id, 0, now=clock.now + 3, refund=True, window_seconds=WINDOW)
    assert (got.outcome, got.given_back, got.balance) == ("applied", 0, 20)
    assert counters(store) == (1, 3, 0)
    entry = store.ledger_tail("acme", 1, end=first.charge_id)[-1]
    assert entry.fields["period_restarts"] == "2"  # the ledger entry names it too


def test_the_restart_counter_is_read_from_the_ledger_when_the_hold_is_gone(
    daily: Admin, store: RedisStore, clock: Clock, redis_client: redis.Redis
) -> None:
    daily.change_plan("acme", "once")
    first = charge(store, 2, clock.now)
    redis_client.delete(store.keys.account("acme").holds)  # settled from its ledger entry
    daily.change_plan("acme", "daily")
    daily.change_plan("acme", "once")
    got = store.settle("acme", first.charge_id, 0, now=clock.now + 3, refund=True, window_seconds=WINDOW)
    assert (got.outcome, got.given_back) == ("applied", 0)
    assert store.account_state("acme").used == 0


@pytest.mark.parametrize("field", ["period_requests", "period_from_balance", "period_restarts"])
@pytest.mark.parametrize("value", [*NOT_INTEGERS, "-1", "1000000000000001"])
def test_a_counter_that_is_not_a_strict_integer_is_refused_before_anything_is_written(
    daily: Admin, store: RedisStore, clock: Clock, redis_client: redis.Redis, field: str, value: str
) -> None:
    held = charge(store, 7, clock.now, hold_seconds=60)
    redis_client.hset(store.keys.account("acme").state, field, value)
    before = snapshot(redis_client)
    calls: list[Callable[[], object]] = [
        lambda: charge(store, 1, clock.now + 1),
        lambda: store.settle(
            "acme", held.charge_id, 0, now=clock.now + 2, refund=True, window_seconds=WINDOW
        ),
        lambda: store.balance("acme"),
    ]
    if field == "period_restarts":
        calls += [
            lambda: daily.change_plan("acme", "once"),
            lambda: daily.subscribe("acme", "daily", anchor=0),
        ]
    for call in calls:
        with pytest.raises(StoreDataError) as raised:
            call()
        assert field in str(raised.value)
        assert snapshot(redis_client) == before


@pytest.mark.parametrize(
    "value",
    [
        *["5", "x:1", f"{1_767_225_600}:1e3", ":1", f"{1_767_225_600}:-1"],
        *["x:0:1", "-1:0:1", "01:0:1", ":0:1", "1:x:1", "1:0:1e3", "1:0:-1", "1:0:1:1", "1::1"],
    ],
)
@pytest.mark.parametrize("field", ["requests:ann", "used:ann"])
def test_a_members_use_or_requests_that_do_not_parse_are_refused_before_anything_is_written(
    daily: Admin,
    store: RedisStore,
    clock: Clock,
    redis_client: redis.Redis,
    value: str,
    field: str,
) -> None:
    held = charge(store, 2, clock.now, member="ann", hold_seconds=60)
    redis_client.hset(store.keys.account("acme").members, field, value)
    before = snapshot(redis_client)
    checked: tuple[Callable[[], object], ...] = (
        lambda: charge(store, 1, clock.now + 1, member="ann"),
        lambda: store.settle("acme", held.charge_id, 1, now=clock.now + 2, window_seconds=WINDOW),
        lambda: store.balance("acme", "ann"),
    )
    for call in checked:
        with pytest.raises(StoreDataError) as raised:
            call()
        assert field in str(raised.value)
        assert snapshot(redis_client) == before


def test_a_member_capped_in_a_period_is_not_capped_after_a_plan_switch_and_back(
    daily: Admin, store: RedisStore, clock: Clock
) -> None:
    """A plan without periods, another plan, then one without periods again: both periods start at
    0, and the member's use of the first is not its use of the last."""
    daily.set_member_cap("acme", "ann", 2)
    daily.change_plan("acme", "once")
    assert charge(store, 2, clock.now, member="ann").allowed
    capped = charge(store, 1, clock.now + 1, member="ann")
    assert (capped.allowed, capped.reason) == (False, "member_cap_reached")
    daily.change_plan("acme", "daily")
    daily.change_plan("acme", "once")
    view = store.balance("acme", "ann")
    assert (view.member_used, view.member_requests) == (0, 0)
    again = charge(store, 1, clock.now + 2, member="ann")
    assert again.allowed
    assert again.member_used == 1
    assert store.balance("acme", "ann").member_requests == 1


def test_a_member_capped_in_a_day_is_not_capped_after_a_week_and_the_same_day_again(
    daily: Admin, store: RedisStore, clock: Clock
) -> None:
    """day -> week -> day with one anchor: the periods' lattices give the same start each time."""
    daily.apply_plan(Plan("weekly", period=Period.WEEK, allowance=5, prepaid=True))
    daily.set_member_cap("acme", "ann", 2)
    assert charge(store, 2, clock.now, member="ann").allowed
    assert charge(store, 1, clock.now + 1, member="ann").reason == "member_cap_reached"
    daily.change_plan("acme", "weekly")
    daily.change_plan("acme", "daily")
    again = charge(store, 1, clock.now + 2, member="ann")
    assert (again.allowed, again.member_used) == (True, 1)


def test_a_refund_after_a_switch_and_back_gives_nothing_back_to_the_members_new_use(
    daily: Admin, store: RedisStore, clock: Clock
) -> None:
    daily.change_plan("acme", "once")
    first = charge(store, 2, clock.now, member="ann")
    daily.change_plan("acme", "daily")
    daily.change_plan("acme", "once")
    assert charge(store, 3, clock.now + 1, member="ann").member_used == 3
    got = store.settle("acme", first.charge_id, 0, now=clock.now + 2, refund=True, window_seconds=WINDOW)
    assert got.outcome == "applied"
    view = store.balance("acme", "ann")
    assert (view.member_used, view.member_requests) == (3, 1)


def test_a_members_use_stored_by_an_earlier_version_counts_while_its_period_start_is_current(
    daily: Admin, store: RedisStore, clock: Clock, redis_client: redis.Redis
) -> None:
    """A value "<period start>:<n>", without the restart count, is read as it always was."""
    members = store.keys.account("acme").members
    daily.change_plan("acme", "once")  # its period starts at 0, whatever Redis's clock says
    daily.set_member_cap("acme", "ann", 5)
    redis_client.hset(members, mapping={"used:ann": "0:4", "requests:ann": "0:3"})
    assert charge(store, 2, clock.now, member="ann").reason == "member_cap_reached"
    view = store.balance("acme", "ann")
    assert (view.member_used, view.member_requests) == (4, 3)
    assert charge(store, 1, clock.now + 1, member="ann").member_used == 5
    restarts = store.account_state("acme").period_restarts
    assert redis_client.hget(members, "used:ann") == f"{restarts}:0:5".encode()
    assert redis_client.hget(members, "requests:ann") == f"{restarts}:0:4".encode()
    redis_client.hset(members, "used:ann", f"{clock.now}:4")  # another period's
    assert charge(store, 5, clock.now + 2, member="ann").member_used == 5


def test_a_refund_of_a_charge_made_before_the_counters_existed_takes_nothing_from_them(
    daily: Admin, store: RedisStore, clock: Clock, redis_client: redis.Redis
) -> None:
    """A hold without period_restarts was written by a charge that counted no request and no credits
    from the balance: refunding it gives its allowance back to ``used`` (which that charge did count),
    and leaves the counters to the charges that are in them."""
    keys = store.keys.account("acme")
    old = charge(store, 7, clock.now, member="ann")  # 5 from the allowance, 2 from the balance
    facts = json.loads(redis_client.hget(keys.holds, old.charge_id) or "{}")
    del facts["period_restarts"]
    redis_client.hset(keys.holds, old.charge_id, json.dumps(facts))
    redis_client.hdel(keys.state, "period_requests", "period_from_balance")
    redis_client.hdel(keys.members, "requests:ann")
    charge(store, 1, clock.now + 1, member="ann")  # from the balance, counted
    assert counters(store) == (1, 5, 1)
    got = store.settle("acme", old.charge_id, 0, now=clock.now + 2, refund=True, window_seconds=WINDOW)
    assert (got.outcome, got.given_back, got.balance) == ("applied", 7, 19)
    assert counters(store) == (1, 0, 1)
    # <restarts>:<period start>:<requests>, the subscription being the account's first restart
    assert redis_client.hget(keys.members, "requests:ann") == f"1:{clock.now}:1".encode()


@pytest.mark.parametrize("where", ["hold", "ledger"])
@pytest.mark.parametrize("value", ["x", "", "-1", "01", "1e3", "1000000000000001", "9007199254740993"])
def test_a_charges_restart_count_that_does_not_parse_is_refused_before_anything_is_written(
    daily: Admin, store: RedisStore, clock: Clock, redis_client: redis.Redis, where: str, value: str
) -> None:
    keys = store.keys.account("acme")
    held = charge(store, 7, clock.now)
    if where == "hold":
        facts = json.loads(redis_client.hget(keys.holds, held.charge_id) or "{}")
        redis_client.hset(keys.holds, held.charge_id, json.dumps({**facts, "period_restarts": value}))
    else:
        redis_client.delete(keys.holds, keys.holds_index)
        entries = cast(list[tuple[bytes, dict[FieldT, EncodableT]]], redis_client.xrange(keys.ledger))
        redis_client.delete(keys.ledger)
        for entry_id, fields in entries:  # the same stream, the charge's entry broken
            if entry_id.decode() == held.charge_id:
                fields = {**fields, b"period_restarts": value}
            redis_client.xadd(keys.ledger, fields, id=entry_id)
    before = snapshot(redis_client)
    with pytest.raises(StoreDataError) as raised:
        store.settle("acme", held.charge_id, 0, now=clock.now + 1, refund=True, window_seconds=WINDOW)
    assert "period_restarts" in str(raised.value)
    assert snapshot(redis_client) == before
