"""The charge script against a real Redis: the money rules, one behaviour per test."""

from __future__ import annotations

import random
import threading

import pytest
import redis

from creditgate.core.decision import Reason
from creditgate.core.model import Plan, Status
from creditgate.core.periods import DAY_SECONDS, Period, window_at
from creditgate.core.policy import ChargeRequest
from creditgate.errors import StoreTimeout
from creditgate.ops.admin import Admin
from creditgate.store.replies import legacy_request_key_input, request_key_input
from creditgate.store.store import RedisStore, _script_source
from tests.conftest import Clock

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def seed(
    admin: Admin, account: str = "acme", *, plan: Plan | None = None, balance: int = 0, **sub: object
) -> None:
    plan = plan or Plan("pro", period=Period.MONTH, allowance=0, prepaid=True)
    admin.apply_plan(plan)
    admin.subscribe(account, plan.name, starts_at=sub.pop("starts_at", T0), **sub)  # type: ignore[arg-type]
    if balance:
        admin.grant(account, balance, note="seed")


def test_refuses_an_account_without_subscription(store: RedisStore) -> None:
    store.mark_store()  # a store the operators set up (an empty Redis is store_empty: test_money_empty_store)
    result = store.charge(ChargeRequest("nobody", 1, now=T0))
    assert not result.allowed
    assert result.reason is Reason.NO_SUBSCRIPTION


def test_charges_the_prepaid_balance(admin: Admin, store: RedisStore) -> None:
    seed(admin, balance=10)
    result = store.charge(ChargeRequest("acme", 3, now=T0 + 5))
    assert result.allowed and result.reason is None
    assert (result.balance, result.from_balance, result.from_allowance) == (7, 3, 0)
    assert store.account_state("acme").balance == 7


def test_refuses_with_insufficient_credit_and_charges_nothing(admin: Admin, store: RedisStore) -> None:
    seed(admin, balance=2)
    charges_before = [e for e in store.ledger("acme") if e.fields["kind"] == "charge"]
    result = store.charge(ChargeRequest("acme", 3, now=T0 + 5))
    assert result.reason is Reason.INSUFFICIENT_CREDIT
    assert result.balance == 2
    assert store.account_state("acme").balance == 2
    assert [e for e in store.ledger("acme") if e.fields["kind"] == "charge"] == charges_before


def test_the_allowance_pays_before_the_balance(admin: Admin, store: RedisStore) -> None:
    seed(admin, plan=Plan("starter", period=Period.DAY, allowance=5, prepaid=True), balance=10)
    first = store.charge(ChargeRequest("acme", 4, now=T0 + 1))
    assert (first.from_allowance, first.from_balance, first.allowance_remaining, first.balance) == (
        4,
        0,
        1,
        10,
    )
    second = store.charge(ChargeRequest("acme", 3, now=T0 + 2))
    assert (second.from_allowance, second.from_balance, second.allowance_remaining, second.balance) == (
        1,
        2,
        0,
        8,
    )


def test_refuses_with_quota_exhausted_when_the_plan_has_no_prepaid_use(
    admin: Admin, store: RedisStore
) -> None:
    seed(admin, plan=Plan("free", period=Period.DAY, allowance=2, prepaid=False), balance=100)
    assert store.charge(ChargeRequest("acme", 2, now=T0 + 10)).allowed
    result = store.charge(ChargeRequest("acme", 1, now=T0 + 20))
    assert result.reason is Reason.QUOTA_EXHAUSTED
    assert result.period_end == T0 + DAY_SECONDS
    assert store.account_state("acme").balance == 100


def test_the_period_rolls_over_at_its_end_to_the_second(admin: Admin, store: RedisStore) -> None:
    seed(admin, plan=Plan("free", period=Period.DAY, allowance=1, prepaid=False))
    assert store.charge(ChargeRequest("acme", 1, now=T0)).allowed
    assert store.charge(ChargeRequest("acme", 1, now=T0 + DAY_SECONDS - 1)).reason is Reason.QUOTA_EXHAUSTED
    renewed = store.charge(ChargeRequest("acme", 1, now=T0 + DAY_SECONDS))
    assert renewed.allowed
    assert renewed.period_end == T0 + 2 * DAY_SECONDS
    kinds = [entry.fields["kind"] for entry in store.ledger("acme")]
    assert kinds == ["period_reset", "charge", "period_reset", "charge"]


def test_a_monthly_period_anchored_on_the_31st_ends_on_the_last_day_of_february(
    admin: Admin, store: RedisStore
) -> None:
    jan_31 = T0 + 30 * DAY_SECONDS + 3600
    seed(admin, plan=Plan("m", period=Period.MONTH, allowance=1, prepaid=False), starts_at=jan_31)
    result = store.charge(ChargeRequest("acme", 1, now=jan_31 + 5))
    feb_28 = T0 + (31 + 27) * DAY_SECONDS + 3600
    assert result.period_end == feb_28


def test_lua_periods_match_the_python_core(redis_client: redis.Redis) -> None:
    probe = redis_client.register_script(
        _script_source("charge").split("local account_key")[0]
        + "\nlocal s, e = window_at(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))\nreturn {s, e}"
    )
    rng = random.Random(7)
    for _ in range(400):
        period = rng.choice([Period.DAY, Period.WEEK, Period.MONTH, Period.NONE])
        anchor = rng.randrange(0, 4_000_000_000)
        now = anchor + rng.randrange(-DAY_SECONDS, 3_000 * DAY_SECONDS)
        window = window_at(period, anchor, now)
        assert probe(args=[period.value, anchor, now]) == [window.start, window.end], (period, anchor, now)


def test_an_inactive_subscription_is_refused_and_trialing_is_charged(admin: Admin, store: RedisStore) -> None:
    seed(admin, balance=10)
    for status in (Status.PAST_DUE, Status.SUSPENDED, Status.CANCELED):
        admin.set_status("acme", status)
        assert store.charge(ChargeRequest("acme", 1, now=T0 + 5)).reason is Reason.SUBSCRIPTION_INACTIVE
    admin.set_status("acme", Status.TRIALING)
    assert store.charge(ChargeRequest("acme", 1, now=T0 + 5)).allowed


def test_a_subscription_that_has_not_started_is_inactive(admin: Admin, store: RedisStore) -> None:
    seed(admin, balance=10, starts_at=T0 + 100)
    result = store.charge(ChargeRequest("acme", 1, now=T0 + 99))
    assert result.reason is Reason.SUBSCRIPTION_INACTIVE
    assert result.starts_at == T0 + 100


def test_expiry_takes_effect_at_the_second(admin: Admin, store: RedisStore) -> None:
    seed(admin, balance=10, expires_at=T0 + 60)
    assert store.charge(ChargeRequest("acme", 1, now=T0 + 59)).allowed
    assert store.charge(ChargeRequest("acme", 1, now=T0 + 60)).reason is Reason.SUBSCRIPTION_EXPIRED


def test_a_plan_not_entitled_to_the_route_is_refused(admin: Admin, store: RedisStore) -> None:
    seed(admin, balance=10)
    assert (
        store.charge(ChargeRequest("acme", 1, now=T0 + 1, entitled=["enterprise", "team"])).reason
        is Reason.PLAN_NOT_ENTITLED
    )
    assert store.charge(ChargeRequest("acme", 1, now=T0 + 1, entitled=["team", "pro"])).allowed


def test_a_free_request_is_allowed_without_a_charge(admin: Admin, store: RedisStore) -> None:
    seed(admin)
    result = store.charge(ChargeRequest("acme", 0, now=T0 + 1))
    assert result.allowed and result.charge_id == ""
    assert [e.fields["kind"] for e in store.ledger("acme")] == ["period_reset"]


def test_charges_go_on_after_a_script_flush(
    admin: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    seed(admin, balance=10)
    assert store.charge(ChargeRequest("acme", 1, now=T0 + 1)).allowed
    redis_client.script_flush()
    assert store.charge(ChargeRequest("acme", 1, now=T0 + 2)).balance == 8


def test_every_charge_is_in_the_ledger_and_the_ledger_replays_to_the_balance(
    admin: Admin, store: RedisStore
) -> None:
    seed(admin, plan=Plan("mix", period=Period.DAY, allowance=3, prepaid=True), balance=100)
    for i in range(30):
        store.charge(ChargeRequest("acme", 1 + i % 3, now=T0 + i * 3600))
    admin.adjust_down("acme", 5)
    charges = [e for e in store.ledger("acme") if e.fields["kind"] == "charge"]
    assert len(charges) == 30
    assert admin.verify_ledger("acme").replayed == store.account_state("acme").balance


def test_retention_folds_old_entries_without_breaking_the_replay(admin: Admin, store: RedisStore) -> None:
    seed(admin, balance=1_000)
    for i in range(400):
        store.charge(ChargeRequest("acme", 1, now=T0 + i, ledger_retention=100))
    state = store.account_state("acme")
    assert len(list(store.ledger("acme"))) <= 100 + 100 // 16
    assert state.ledger_base != 0
    assert admin.verify_ledger("acme").replayed == state.balance == 600


def test_usage_is_counted_per_route_and_day(admin: Admin, store: RedisStore) -> None:
    seed(admin, balance=3)
    for _ in range(4):
        store.charge(ChargeRequest("acme", 1, now=T0 + 1, route="route:r1"))
    assert store.usage("acme", T0) == {
        "route:r1|requests": 3,
        "route:r1|credits": 3,
        "route:r1|refused": 1,
        "route:r1|refused:insufficient_credit": 1,  # by reason, for /metrics
    }


def test_concurrent_charges_never_spend_more_than_the_balance(admin: Admin, store: RedisStore) -> None:
    seed(admin, balance=40)
    results: list[bool] = []
    lock = threading.Lock()

    def spend() -> None:
        allowed = store.charge(ChargeRequest("acme", 1, now=T0 + 1)).allowed
        with lock:
            results.append(allowed)

    threads = [threading.Thread(target=spend) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 40
    assert store.account_state("acme").balance == 0


def test_a_grant_retried_with_the_same_key_counts_once(admin: Admin, store: RedisStore) -> None:
    seed(admin)
    first = admin.grant("acme", 25, idempotency_key="inv-1")
    again = admin.grant("acme", 25, idempotency_key="inv-1")
    assert first.applied and not again.applied
    assert again.ledger_id == first.ledger_id
    assert store.account_state("acme").balance == 25


def test_racing_grants_with_one_key_count_once(admin: Admin, store: RedisStore) -> None:
    seed(admin)
    threads = [
        threading.Thread(target=admin.grant, args=("acme", 7), kwargs={"idempotency_key": "k"})
        for _ in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.account_state("acme").balance == 7


def test_account_names_cannot_escape_their_hash_tag(admin: Admin, store: RedisStore, clock: Clock) -> None:
    seed(admin, "a}b:{c}%", balance=5)
    seed(admin, "a", balance=1)
    assert store.charge(ChargeRequest("a}b:{c}%", 5, now=T0 + 1)).allowed
    assert store.account_state("a").balance == 1
    assert store.keys.account("a}b:{c}%").state.count("{") == 1


def test_a_charge_that_runs_after_its_deadline_applies_nothing(admin: Admin, store: RedisStore) -> None:
    seed(admin, balance=10)
    store.charge(ChargeRequest("acme", 1, now=T0 + 1))  # learns the offset to Redis's clock
    store.charge_budget_ms = 100
    store.clock.offset_ms = -(10**9)  # as if the charge reached Redis ten days after the caller gave up
    with pytest.raises(StoreTimeout):
        store.charge(ChargeRequest("acme", 1, now=T0 + 2))
    assert store.account_state("acme").balance == 9


def test_a_burst_of_300_concurrent_charges_is_served_without_pool_errors(
    admin: Admin, store: RedisStore
) -> None:
    seed(admin, balance=1_000)
    barrier = threading.Barrier(300)
    failures: list[BaseException] = []

    def charge() -> None:
        barrier.wait()
        try:
            store.charge(ChargeRequest("acme", 1, now=T0 + 1))
        except Exception as error:  # the pool refusing a connection would land here
            failures.append(error)

    threads = [threading.Thread(target=charge) for _ in range(300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert store.account_state("acme").balance == 700


def test_a_refund_after_the_period_ended_gives_back_nothing_to_the_new_period(
    admin: Admin, store: RedisStore
) -> None:
    seed(admin, plan=Plan("daily", period=Period.DAY, allowance=5, prepaid=False))
    charge = store.charge(ChargeRequest("acme", 2, now=T0 + 1))
    store.charge(ChargeRequest("acme", 1, now=T0 + DAY_SECONDS + 1))  # the next day's period starts
    refund = store.settle(
        "acme", charge.charge_id, 0, now=T0 + DAY_SECONDS + 2, refund=True, window_seconds=3 * DAY_SECONDS
    )
    assert (refund.outcome, refund.given_back) == ("applied", 0)
    assert store.account_state("acme").used == 1


def test_a_charge_is_settled_at_most_once(admin: Admin, store: RedisStore) -> None:
    seed(admin, balance=10)
    charge = store.charge(ChargeRequest("acme", 4, now=T0 + 1, hold_seconds=60))
    first = store.settle("acme", charge.charge_id, 1, now=T0 + 2)
    again = store.settle("acme", charge.charge_id, 0, now=T0 + 3, refund=True)
    assert (first.outcome, first.given_back, again.outcome) == ("applied", 3, "already")
    assert store.account_state("acme").balance == 9
    assert admin.verify_ledger("acme").replayed == 9


# Replays: an Idempotency-Key belongs to the consumer (the pool member), and a replay is answered only
# while the request would still be allowed.

WINDOW = 3600


def keyed(
    cost: int, now: int, *, member: str = "", entitled: tuple[str, ...] = (), key: str = "order-1042"
) -> ChargeRequest:
    return ChargeRequest(
        "acme",
        cost,
        now=now,
        entitled=entitled,
        idempotency_key=key,
        idempotency_window=WINDOW,
        member=member,
    )


def charges(store: RedisStore, account: str = "acme") -> list[str]:
    return [e.id for e in store.ledger(account) if e.fields["kind"] == "charge"]


def test_a_replay_while_still_allowed_answers_the_first_charge_and_charges_nothing(
    admin: Admin, store: RedisStore
) -> None:
    seed(admin, balance=10)
    first = store.charge(keyed(3, T0 + 1))
    again = store.charge(keyed(3, T0 + 2))
    assert (again.allowed, again.replayed, again.charge_id) == (True, True, first.charge_id)
    assert (again.from_allowance, again.from_balance, again.balance) == (0, 0, 7)
    assert store.account_state("acme").balance == 7
    assert charges(store) == [first.charge_id]


def test_a_replay_after_the_subscription_is_canceled_is_refused_and_charges_nothing(
    admin: Admin, store: RedisStore
) -> None:
    seed(admin, balance=10)
    first = store.charge(keyed(3, T0 + 1))
    admin.set_status("acme", Status.CANCELED)
    again = store.charge(keyed(3, T0 + 2))
    assert (again.allowed, again.reason, again.replayed, again.charge_id) == (
        False,
        Reason.SUBSCRIPTION_INACTIVE,
        False,
        "",
    )
    assert Reason.SUBSCRIPTION_INACTIVE.status == 402
    assert store.account_state("acme").balance == 7
    assert charges(store) == [first.charge_id]


def test_a_refused_replay_keeps_its_key_so_a_later_allowed_retry_is_not_charged_again(
    admin: Admin, store: RedisStore
) -> None:
    seed(admin, balance=10)
    first = store.charge(keyed(3, T0 + 1))
    admin.set_status("acme", Status.SUSPENDED)
    assert not store.charge(keyed(3, T0 + 2)).allowed
    admin.set_status("acme", Status.ACTIVE)
    again = store.charge(keyed(3, T0 + 3))
    assert (again.allowed, again.replayed, again.charge_id) == (True, True, first.charge_id)
    assert store.account_state("acme").balance == 7


def test_a_replay_after_expiry_is_refused(admin: Admin, store: RedisStore) -> None:
    seed(admin, balance=10, expires_at=T0 + 60)
    first = store.charge(keyed(3, T0 + 59))
    again = store.charge(keyed(3, T0 + 60))
    assert (again.allowed, again.reason, again.replayed) == (False, Reason.SUBSCRIPTION_EXPIRED, False)
    assert store.account_state("acme").balance == 7
    assert charges(store) == [first.charge_id]


def test_a_replay_on_a_route_the_plan_is_no_longer_entitled_to_is_refused(
    admin: Admin, store: RedisStore
) -> None:
    seed(admin, balance=10)
    first = store.charge(keyed(3, T0 + 1, entitled=("pro", "team")))
    again = store.charge(keyed(3, T0 + 2, entitled=("team",)))
    assert (again.allowed, again.reason, again.replayed) == (False, Reason.PLAN_NOT_ENTITLED, False)
    assert store.account_state("acme").balance == 7
    assert charges(store) == [first.charge_id]


def test_a_member_at_its_cap_cannot_use_another_members_key(admin: Admin, store: RedisStore) -> None:
    seed(admin, balance=10)
    admin.set_member_cap("acme", "bob", 0)
    ann = store.charge(keyed(3, T0 + 1, member="ann"))
    bob = store.charge(keyed(3, T0 + 2, member="bob"))
    assert (bob.allowed, bob.reason, bob.replayed, bob.charge_id) == (
        False,
        Reason.MEMBER_CAP_REACHED,
        False,
        "",
    )
    assert store.account_state("acme").balance == 7
    assert charges(store) == [ann.charge_id]


def test_a_key_is_the_members_own_another_member_with_it_is_charged_as_a_new_request(
    admin: Admin, store: RedisStore
) -> None:
    seed(admin, balance=10)
    ann = store.charge(keyed(3, T0 + 1, member="ann"))
    bob = store.charge(keyed(3, T0 + 2, member="bob"))
    assert (bob.allowed, bob.replayed) == (True, False) and bob.charge_id != ann.charge_id
    again = store.charge(keyed(3, T0 + 3, member="ann"))
    assert (again.replayed, again.charge_id) == (True, ann.charge_id)
    assert store.account_state("acme").balance == 4


def test_a_replay_of_a_member_whose_cap_was_cut_below_its_use_is_refused(
    admin: Admin, store: RedisStore
) -> None:
    seed(admin, balance=10)
    admin.set_member_cap("acme", "ann", 5)
    first = store.charge(keyed(5, T0 + 1, member="ann"))
    assert store.charge(keyed(5, T0 + 2, member="ann")).replayed  # at the cap: its own charge fits
    admin.set_member_cap("acme", "ann", 2)
    again = store.charge(keyed(5, T0 + 3, member="ann"))
    assert (again.allowed, again.reason, again.replayed) == (False, Reason.MEMBER_CAP_REACHED, False)
    assert charges(store) == [first.charge_id]
    assert store.account_state("acme").balance == 5


def legacy_key(store: RedisStore, redis_client: redis.Redis, cost: int, member: str) -> None:
    """Move a member's key to where a version before member-bound keys kept it (route, cost, key)."""
    keys = store.keys.account("acme")
    new = keys.request(request_key_input("global", cost, "order-1042", member))
    redis_client.rename(new, keys.request(legacy_request_key_input("global", cost, "order-1042")))


def test_a_key_written_before_keys_were_bound_to_the_member_replays_for_that_member_only(
    admin: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    seed(admin, balance=10)
    admin.set_member_cap("acme", "cid", 0)
    ann = store.charge(keyed(3, T0 + 1, member="ann"))
    legacy_key(store, redis_client, 3, "ann")
    again = store.charge(keyed(3, T0 + 2, member="ann"))
    assert (again.replayed, again.charge_id) == (True, ann.charge_id)
    capped = store.charge(keyed(3, T0 + 3, member="cid"))
    assert (capped.allowed, capped.reason) == (False, Reason.MEMBER_CAP_REACHED)
    bob = store.charge(keyed(3, T0 + 4, member="bob"))
    assert (bob.allowed, bob.replayed) == (True, False)
    assert store.account_state("acme").balance == 4
    assert store.charge(keyed(3, T0 + 5, member="ann")).charge_id == ann.charge_id


def test_a_key_written_before_the_change_by_a_member_is_not_the_accounts_own(
    admin: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    seed(admin, balance=10)
    ann = store.charge(keyed(3, T0 + 1, member="ann"))
    legacy_key(store, redis_client, 3, "ann")
    own = store.charge(keyed(3, T0 + 2))
    assert (own.allowed, own.replayed) == (True, False) and own.charge_id != ann.charge_id
    assert store.charge(keyed(3, T0 + 3)).charge_id == own.charge_id
    assert store.account_state("acme").balance == 4


def test_a_key_written_before_the_change_whose_charge_is_folded_away_lets_no_uncharged_member_ride(
    admin: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    """The ledger no longer names the member (no settlement facts either): the key answers for a
    member charged before, as it did before the upgrade, never for a member that has never been charged."""
    seed(admin, balance=1_000)
    admin.set_member_cap("acme", "cid", 0)
    ann = store.charge(keyed(3, T0 + 1, member="ann"))
    legacy_key(store, redis_client, 3, "ann")
    for i in range(200):
        store.charge(ChargeRequest("acme", 1, now=T0 + 2 + i, ledger_retention=100))
    assert ann.charge_id not in charges(store)
    capped = store.charge(keyed(3, T0 + 300, member="cid"))
    assert (capped.allowed, capped.reason) == (False, Reason.MEMBER_CAP_REACHED)
    again = store.charge(keyed(3, T0 + 301, member="ann"))
    assert (again.replayed, again.charge_id) == (True, ann.charge_id)
    assert store.account_state("acme").balance == 1_000 - 3 - 200
