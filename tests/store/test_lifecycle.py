"""lifecycle.lua against a real Redis: each step of a billing system's subscription lifecycle, applied in
the order its events happened whatever order they arrive in, once in effect however often they arrive,
and nothing written when the account's hash holds something that does not parse."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from creditgate.core.decision import Reason
from creditgate.core.model import MAX_INSTANT, Plan, Status
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.errors import StoreDataError
from creditgate.ops.admin import Admin
from creditgate.store import lifecycle
from creditgate.store.lifecycle import (
    LifecycleStep,
    Opening,
    invoice_paid,
    lifecycle_state,
    payment_failed,
    subscription_changed,
)
from creditgate.store.store import RedisStore
from tests.conftest import Clock
from tests.store.test_redis_topologies import cluster_admin  # noqa: F401  (a fixture)

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, the tests' clock
GRACE = 3 * 86_400
BASIC = Plan("basic", period=Period.MONTH, allowance=100)
PRO = Plan("pro", period=Period.MONTH, allowance=1_000)
DAILY = Plan("daily", period=Period.DAY, allowance=10)


@pytest.fixture
def plans(admin: Admin) -> Admin:
    for plan in (BASIC, PRO, DAILY):
        admin.apply_plan(plan)
    return admin


@pytest.fixture
def acme(plans: Admin) -> Admin:
    """Account acme on basic, active since T0."""
    plans.subscribe("acme", "basic", starts_at=T0)
    return plans


def raw(client: redis.Redis, store: RedisStore, account: str = "acme") -> dict[bytes, bytes]:
    return client.hgetall(store.keys.account(account).state)  # type: ignore[return-value]


def charge(store: RedisStore, at: int, account: str = "acme") -> Reason | None:
    result = store.charge(ChargeRequest(account, 1, now=at))
    return None if result.allowed else result.reason


# Payment failed


def test_a_failed_payment_makes_an_active_account_past_due_with_grace_from_the_event(acme: Admin) -> None:
    step = payment_failed(acme.store, "acme", at=T0 + 100, grace=GRACE)
    assert (step.outcome, step.previous_status, step.status) == ("applied", "active", "past_due")
    assert step.grace_until == T0 + 100 + GRACE
    assert lifecycle_state(acme.store, "acme") == lifecycle.LifecycleState(
        "past_due", "basic", T0 + 100 + GRACE, T0 + 100
    )


def test_a_failed_payment_at_the_end_of_a_trial_makes_it_past_due(plans: Admin) -> None:
    plans.subscribe("acme", "basic", status=Status.TRIALING, starts_at=T0)
    assert payment_failed(plans.store, "acme", at=T0, grace=GRACE).status == "past_due"


def test_a_failure_again_while_past_due_keeps_the_grace_of_the_first(acme: Admin) -> None:
    payment_failed(acme.store, "acme", at=T0, grace=GRACE)
    again = payment_failed(acme.store, "acme", at=T0 + 86_400, grace=GRACE)
    assert (again.outcome, again.grace_until, again.stripe_subscription_at) == (
        "unchanged",
        T0 + GRACE,
        T0 + 86_400,
    )


def test_a_past_due_set_without_grace_gets_none_from_a_failed_payment(acme: Admin) -> None:
    acme.set_status("acme", Status.PAST_DUE)
    step = payment_failed(acme.store, "acme", at=T0, grace=GRACE)
    assert (step.outcome, step.status, step.grace_until) == ("unchanged", "past_due", 0)


@pytest.mark.parametrize("status", [Status.CANCELED, Status.SUSPENDED])
def test_a_failed_payment_leaves_a_canceled_or_suspended_account_as_it_is(
    acme: Admin, status: Status
) -> None:
    acme.set_status("acme", status)
    step = payment_failed(acme.store, "acme", at=T0, grace=GRACE)
    assert (step.outcome, step.status, step.grace_until) == ("unchanged", status.value, 0)
    assert lifecycle_state(acme.store, "acme").grace_until == 0


def test_the_grace_never_passes_the_latest_instant(acme: Admin) -> None:
    assert payment_failed(acme.store, "acme", at=MAX_INSTANT - 5, grace=GRACE).grace_until == MAX_INSTANT


# Invoice paid


def test_a_paid_invoice_makes_a_past_due_account_active_and_clears_its_grace(
    acme: Admin, redis_client: redis.Redis
) -> None:
    payment_failed(acme.store, "acme", at=T0, grace=GRACE)
    step = invoice_paid(acme.store, "acme", at=T0 + 60)
    assert (step.outcome, step.previous_status, step.status, step.grace_until) == (
        "applied",
        "past_due",
        "active",
        0,
    )
    assert b"grace_until" not in raw(redis_client, acme.store)
    assert charge(acme.store, T0 + GRACE + 60) is None


@pytest.mark.parametrize("status", [Status.ACTIVE, Status.TRIALING, Status.CANCELED, Status.SUSPENDED])
def test_a_paid_invoice_changes_no_other_status(acme: Admin, status: Status) -> None:
    acme.set_status("acme", status)
    step = invoice_paid(acme.store, "acme", at=T0)
    assert (step.outcome, step.status, step.stripe_subscription_at) == ("unchanged", status.value, T0)


def test_a_paid_invoice_that_arrives_before_its_older_failure_keeps_the_account_active(acme: Admin) -> None:
    """Stripe delivers out of order: the payment failed at T0 and was paid at T0 + 60, and the paid
    invoice arrives first. The failure is older than what the account already reflects."""
    assert invoice_paid(acme.store, "acme", at=T0 + 60).outcome == "unchanged"
    late = payment_failed(acme.store, "acme", at=T0, grace=GRACE)
    assert (late.outcome, late.status) == ("stale", "active")


# The subscription's own state


@pytest.mark.parametrize("status", list(Status))
def test_the_subscription_status_is_set(acme: Admin, status: Status) -> None:
    step = subscription_changed(acme.store, "acme", at=T0, status=status, grace=GRACE)
    assert (step.previous_status, step.status, step.plan) == ("active", status.value, "basic")
    assert step.grace_until == (T0 + GRACE if status is Status.PAST_DUE else 0)


def test_a_trial_that_ends_makes_the_account_active(plans: Admin) -> None:
    plans.subscribe("acme", "basic", status=Status.TRIALING, starts_at=T0)
    assert charge(plans.store, T0) is None
    step = subscription_changed(plans.store, "acme", at=T0 + 14 * 86_400, status=Status.ACTIVE, grace=GRACE)
    assert (step.outcome, step.previous_status, step.status) == ("applied", "trialing", "active")


def test_canceled_refuses_the_accounts_requests(acme: Admin) -> None:
    assert charge(acme.store, T0) is None
    subscription_changed(acme.store, "acme", at=T0 + 10, status=Status.CANCELED, grace=GRACE)
    assert charge(acme.store, T0 + 20) is Reason.SUBSCRIPTION_INACTIVE
    assert acme.account("acme").plan == "basic"  # canceled keeps the plan, as Admin.set_status does


def test_leaving_past_due_clears_the_grace(acme: Admin, redis_client: redis.Redis) -> None:
    subscription_changed(acme.store, "acme", at=T0, status=Status.PAST_DUE, grace=GRACE)
    assert lifecycle_state(acme.store, "acme").grace_until == T0 + GRACE
    step = subscription_changed(acme.store, "acme", at=T0 + 1, status=Status.SUSPENDED, grace=GRACE)
    assert step.grace_until == 0 and b"grace_until" not in raw(redis_client, acme.store)


def test_a_plan_change_copies_the_plans_terms_and_moves_the_plan_index(acme: Admin) -> None:
    assert charge(acme.store, T0) is None  # 1 of basic's 100 used
    step = subscription_changed(acme.store, "acme", at=T0 + 5, status=Status.ACTIVE, grace=GRACE, plan=PRO)
    assert (step.outcome, step.previous_plan, step.plan) == ("applied", "basic", "pro")
    account = acme.account("acme")
    assert (account.plan, account.allowance, account.used) == ("pro", 1_000, 1)  # the period's use is kept
    assert acme.plan_subscribers("pro") == ["acme"] and acme.plan_subscribers("basic") == []
    assert acme.store.plan_accounts("basic") == []


def test_a_plan_change_to_another_period_length_restarts_the_period(acme: Admin) -> None:
    charge(acme.store, T0)
    subscription_changed(acme.store, "acme", at=T0 + 5, status=Status.ACTIVE, grace=GRACE, plan=DAILY)
    account = acme.account("acme")
    assert (account.plan, account.period, account.allowance, account.used) == ("daily", "day", 10, 0)


def test_no_plan_keeps_the_accounts_plan(acme: Admin) -> None:
    step = subscription_changed(acme.store, "acme", at=T0, status=Status.ACTIVE, grace=GRACE, plan=None)
    assert (step.outcome, step.plan) == ("unchanged", "basic")


def test_the_plans_terms_written_are_the_plans_current_ones(acme: Admin) -> None:
    """A plan changed since the caller read it: the terms copied are caught up after the step."""
    acme.apply_plan(Plan("pro", period=Period.MONTH, allowance=2_000))
    subscription_changed(acme.store, "acme", at=T0, status=Status.ACTIVE, grace=GRACE, plan=PRO)
    assert acme.account("acme").allowance == 2_000


# Order and duplicates


def test_an_older_event_after_a_newer_one_changes_nothing(acme: Admin, redis_client: redis.Redis) -> None:
    subscription_changed(acme.store, "acme", at=T0 + 100, status=Status.CANCELED, grace=GRACE)
    before = raw(redis_client, acme.store)
    older: list[Callable[[], LifecycleStep]] = [
        lambda: subscription_changed(
            acme.store, "acme", at=T0 + 99, status=Status.ACTIVE, grace=GRACE, plan=PRO
        ),
        lambda: payment_failed(acme.store, "acme", at=T0 + 50, grace=GRACE),
        lambda: invoice_paid(acme.store, "acme", at=T0),
    ]
    for send in older:
        step = send()
        assert (step.outcome, step.status, step.plan, step.stripe_subscription_at) == (
            "stale",
            "canceled",
            "basic",
            T0 + 100,
        )
    assert raw(redis_client, acme.store) == before
    assert acme.store.plan_accounts("pro") == []  # the index set added to before the script, put right


def test_a_resent_event_changes_nothing_the_second_time(acme: Admin, redis_client: redis.Redis) -> None:
    first = subscription_changed(acme.store, "acme", at=T0, status=Status.PAST_DUE, grace=GRACE, plan=PRO)
    after_first = raw(redis_client, acme.store)
    again = subscription_changed(acme.store, "acme", at=T0, status=Status.PAST_DUE, grace=GRACE, plan=PRO)
    assert first.outcome == "applied" and again.outcome == "unchanged"
    assert (again.status, again.plan, again.grace_until) == ("past_due", "pro", T0 + GRACE)
    assert raw(redis_client, acme.store) == after_first


def test_events_of_the_same_second_apply_in_the_order_they_arrive(acme: Admin) -> None:
    payment_failed(acme.store, "acme", at=T0, grace=GRACE)
    assert invoice_paid(acme.store, "acme", at=T0).status == "active"


def test_out_of_order_delivery_ends_in_the_newest_state(acme: Admin, redis_client: redis.Redis) -> None:
    """trialing (T0) -> active (T1) -> past_due (T2) -> canceled (T3), delivered in every rotation."""
    events = [
        (T0 + 1, Status.TRIALING),
        (T0 + 2, Status.ACTIVE),
        (T0 + 3, Status.PAST_DUE),
        (T0 + 4, Status.CANCELED),
    ]
    for shift in range(len(events)):
        redis_client.hdel(acme.store.keys.account("acme").state, "stripe_subscription_at")
        for at, status in events[shift:] + events[:shift]:
            subscription_changed(acme.store, "acme", at=at, status=status, grace=GRACE)
        assert lifecycle_state(acme.store, "acme") == lifecycle.LifecycleState("canceled", "basic", 0, T0 + 4)


# Accounts without a subscription


def test_an_account_without_a_subscription_is_left_alone_unless_the_step_opens_one(
    plans: Admin, redis_client: redis.Redis
) -> None:
    plans.grant("acme", 50)
    before = raw(redis_client, plans.store)
    assert payment_failed(plans.store, "acme", at=T0, grace=GRACE).outcome == "no_subscription"
    assert invoice_paid(plans.store, "acme", at=T0).outcome == "no_subscription"
    step = subscription_changed(plans.store, "acme", at=T0, status=Status.ACTIVE, grace=GRACE, plan=BASIC)
    assert step.outcome == "no_subscription"
    assert raw(redis_client, plans.store) == before
    assert plans.store.plan_accounts("basic") == []


def test_a_step_that_opens_a_subscription_subscribes_as_admin_does(plans: Admin) -> None:
    plans.grant("acme", 50)
    opening = Opening(starts_at=T0 - 86_400, anchor=T0 - 3_600)
    step = subscription_changed(
        plans.store, "acme", at=T0, status=Status.TRIALING, grace=GRACE, plan=BASIC, opening=opening
    )
    assert (step.outcome, step.previous_plan, step.plan, step.status) == (
        "subscribed",
        "",
        "basic",
        "trialing",
    )
    account = plans.account("acme")
    assert (account.starts_at, account.anchor, account.expires_at) == (T0 - 86_400, T0 - 3_600, 0)
    assert (account.allowance, account.balance) == (100, 50)
    assert plans.plan_subscribers("basic") == ["acme"] and "acme" in plans.store.account_names()
    assert charge(plans.store, T0) is None


def test_an_account_that_does_not_exist_is_opened_only_when_allowed(
    plans: Admin, redis_client: redis.Redis
) -> None:
    store = plans.store
    assert payment_failed(store, "ghost", at=T0, grace=GRACE).outcome == "no_account"
    kept_out = Opening(T0, T0, create=False)
    step = subscription_changed(
        store, "ghost", at=T0, status=Status.ACTIVE, grace=GRACE, plan=BASIC, opening=kept_out
    )
    assert step.outcome == "no_account"
    assert not redis_client.exists(store.keys.account("ghost").state)
    assert store.plan_accounts("basic") == [] and "ghost" not in store.account_names()
    let_in = Opening(T0, T0, create=True)
    step = subscription_changed(
        store, "ghost", at=T0, status=Status.ACTIVE, grace=GRACE, plan=BASIC, opening=let_in
    )
    assert step.outcome == "subscribed" and plans.plan_subscribers("basic") == ["ghost"]


def test_a_subscription_opened_late_is_not_undone_by_an_older_event(plans: Admin) -> None:
    opening = Opening(T0, T0, create=True)
    subscription_changed(
        plans.store, "new", at=T0 + 10, status=Status.ACTIVE, grace=GRACE, plan=PRO, opening=opening
    )
    older = subscription_changed(
        plans.store, "new", at=T0, status=Status.TRIALING, grace=GRACE, plan=BASIC, opening=opening
    )
    assert (older.outcome, older.status, older.plan) == ("stale", "active", "pro")


# Bad data: refused before the first write


GARBAGE = [
    ("status", "paused"),
    ("period", "fortnight"),
    ("anchor", "1e9"),
    ("grace_until", "soon"),
    ("grace_until", "-1"),
    ("grace_until", str(MAX_INSTANT + 1)),
    ("stripe_subscription_at", "0x10"),
    ("stripe_subscription_at", " 5"),
    ("period_restarts", "many"),
]


@pytest.mark.parametrize(("field", "value"), GARBAGE, ids=[f"{f}={v}" for f, v in GARBAGE])
@pytest.mark.parametrize("step", ["payment_failed", "invoice_paid", "plan_change"])
def test_a_field_that_does_not_parse_is_bad_data_and_nothing_is_written(
    acme: Admin, redis_client: redis.Redis, field: str, value: str, step: str
) -> None:
    store = acme.store
    if field != "status":
        acme.set_status("acme", Status.PAST_DUE)  # so that each step would write
    redis_client.hset(store.keys.account("acme").state, field, value)
    before = raw(redis_client, store)
    with pytest.raises(StoreDataError, match=field):
        if step == "payment_failed":
            payment_failed(store, "acme", at=T0, grace=GRACE)
        elif step == "invoice_paid":
            invoice_paid(store, "acme", at=T0)
        else:
            subscription_changed(store, "acme", at=T0, status=Status.ACTIVE, grace=GRACE, plan=PRO)
    assert raw(redis_client, store) == before
    assert store.plan_accounts("pro") == []


def test_an_account_key_of_another_type_is_bad_data(plans: Admin, redis_client: redis.Redis) -> None:
    key = plans.store.keys.account("acme").state
    redis_client.set(key, "not a hash")
    with pytest.raises(StoreDataError, match="type"):
        payment_failed(plans.store, "acme", at=T0, grace=GRACE)
    assert redis_client.get(key) == b"not a hash"


def test_a_plan_index_set_of_another_type_is_bad_data(acme: Admin, redis_client: redis.Redis) -> None:
    redis_client.set(acme.store.keys.plan_accounts("pro"), "not a set")
    before = raw(redis_client, acme.store)
    with pytest.raises(StoreDataError):
        subscription_changed(acme.store, "acme", at=T0, status=Status.ACTIVE, grace=GRACE, plan=PRO)
    assert raw(redis_client, acme.store) == before


# Redis's side


def test_a_script_flush_between_steps_is_survived(acme: Admin, redis_client: redis.Redis) -> None:
    payment_failed(acme.store, "acme", at=T0, grace=GRACE)
    redis_client.script_flush()
    assert invoice_paid(acme.store, "acme", at=T0 + 1).status == "active"


@pytest.fixture
def on_cluster(cluster_admin: Admin) -> Iterator[Admin]:  # noqa: F811  (the fixture imported above)
    cluster_admin.clock = Clock()
    for plan in (BASIC, PRO):
        cluster_admin.apply_plan(plan)
    yield cluster_admin


@pytest.mark.server
def test_on_a_cluster_the_plan_index_follows_plan_changes_and_new_subscriptions(on_cluster: Admin) -> None:
    store = on_cluster.store
    on_cluster.subscribe("acme", "basic", starts_at=T0)
    subscription_changed(store, "acme", at=T0, status=Status.ACTIVE, grace=GRACE, plan=PRO)
    assert store.plan_accounts("pro") == ["acme"] and store.plan_accounts("basic") == []
    stale = subscription_changed(store, "acme", at=T0 - 1, status=Status.ACTIVE, grace=GRACE, plan=BASIC)
    assert stale.outcome == "stale" and store.plan_accounts("basic") == []
    opening = Opening(T0, T0, create=True)
    subscription_changed(store, "new", at=T0, status=Status.ACTIVE, grace=GRACE, plan=BASIC, opening=opening)
    assert store.plan_accounts("basic") == ["new"]
    assert on_cluster.plan_subscribers("pro") == ["acme"]
    assert payment_failed(store, "new", at=T0 + 1, grace=GRACE).status == "past_due"


# Several subscriptions of one customer


def test_the_account_follows_one_subscription_and_a_new_active_one_takes_over(acme: Admin) -> None:
    """A customer who subscribed again: the old subscription's cancellation or failed payment, sent after
    the new one started, must not cancel the account the new one pays for."""
    store = acme.store
    first = subscription_changed(
        store, "acme", at=T0 + 10, status=Status.ACTIVE, grace=GRACE, subscription="sub_1"
    )
    assert first.outcome in ("applied", "unchanged")
    # The customer subscribes again: the new subscription becomes the one followed.
    new = subscription_changed(
        store, "acme", at=T0 + 20, status=Status.ACTIVE, grace=GRACE, subscription="sub_2"
    )
    assert new.outcome in ("applied", "unchanged")
    old_deleted = subscription_changed(
        store, "acme", at=T0 + 30, status=Status.CANCELED, grace=GRACE, subscription="sub_1"
    )
    assert (old_deleted.outcome, old_deleted.status) == ("other_subscription", "active")
    old_failed = payment_failed(store, "acme", at=T0 + 40, grace=GRACE, subscription="sub_1")
    assert (old_failed.outcome, old_failed.status) == ("other_subscription", "active")
    assert charge(store, T0 + 50) is None
    # The one followed still decides.
    assert payment_failed(store, "acme", at=T0 + 60, grace=GRACE, subscription="sub_2").status == "past_due"
