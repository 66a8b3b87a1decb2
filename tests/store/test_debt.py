"""Debt and grace against a real Redis: what the gate does with the payments' fields of an account.

A payment refunded or disputed after its credits were spent leaves ``debt`` in the account's hash (the
payments' scripts write it; here the tests write it as they would). While it is above 0 every request is
refused with ``debt_outstanding`` and charged nothing; every credit pays it first, and the ledger entry's
amount stays the balance's change. A ``past_due`` subscription is charged until its ``grace_until``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.typing import EncodableT, FieldT

from creditgate.core.decision import ChargeResult, Reason
from creditgate.core.model import MAX_CREDITS, Plan, Status
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.errors import Conflict, IdempotencyKeyReused, StoreDataError
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.money_support import dump_keys

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
ACME_KEYS = "credit-gate:{acme}:*"


@pytest.fixture
def acme(admin: Admin) -> Admin:
    """ "acme" on a daily plan of 5 credits with prepaid use, subscribed a day before T0, with 100 credits."""
    admin.apply_plan(Plan("pro", period=Period.DAY, allowance=5, prepaid=True))
    admin.subscribe("acme", "pro", starts_at=T0 - 86_400, anchor=T0 - 86_400)
    admin.grant("acme", 100)
    return admin


Owe = Callable[..., None]


@pytest.fixture
def owe(store: RedisStore, redis_client: redis.Redis) -> Owe:
    """Write the payments' fields into acme's hash, as a reversal (or the Stripe lifecycle) would."""
    state = store.keys.account("acme").state

    def write(**fields: EncodableT) -> None:
        mapping: dict[FieldT, EncodableT] = {name: value for name, value in fields.items()}
        redis_client.hset(state, mapping=mapping)

    return write


def charge(store: RedisStore, cost: int = 3, at: int = T0 + 10, **more: Any) -> ChargeResult:
    return store.charge(ChargeRequest("acme", cost, now=at, **more))


def kinds(store: RedisStore) -> list[str]:
    return [entry.fields["kind"] for entry in store.ledger("acme")]


# The charge


def test_a_debt_refuses_every_request_and_charges_nothing(
    acme: Admin, store: RedisStore, owe: Owe, redis_client: redis.Redis
) -> None:
    owe(debt=40)
    before = dump_keys(redis_client, ACME_KEYS)
    usage = store.keys.account("acme").usage(T0 + 10).encode()
    for cost in (0, 1, 3):  # a free request too: the account is refused, not the cost
        got = store.charge(ChargeRequest("acme", cost, now=T0 + 10, route="route:r1"))
        assert (got.allowed, got.reason, got.debt, got.balance, got.charge_id) == (
            False,
            Reason.DEBT_OUTSTANDING,
            40,
            100,
            "",
        )
    after = dump_keys(redis_client, ACME_KEYS)
    assert {k: v for k, v in after.items() if k != usage} == before  # not even the period's reset
    assert store.usage("acme", T0) == {"route:r1|refused": 3, "route:r1|refused:debt_outstanding": 3}


def test_the_subscriptions_checks_come_before_the_debt(acme: Admin, store: RedisStore, owe: Owe) -> None:
    owe(debt=1)
    assert charge(store, entitled=("team",)).reason is Reason.PLAN_NOT_ENTITLED
    acme.set_status("acme", Status.SUSPENDED)
    assert charge(store).reason is Reason.SUBSCRIPTION_INACTIVE


def test_an_allowed_request_reports_no_debt(acme: Admin, store: RedisStore) -> None:
    got = store.charge(ChargeRequest("acme", 3, now=T0 + 10))
    assert (got.allowed, got.debt) == (True, 0)


def test_a_retry_while_in_debt_is_refused_and_answered_by_its_charge_once_the_debt_is_paid(
    acme: Admin, store: RedisStore, owe: Owe
) -> None:
    keyed = dict(idempotency_key="order-1", idempotency_window=3600)
    first = store.charge(ChargeRequest("acme", 8, now=T0 + 10, **keyed))  # type: ignore[arg-type]
    owe(debt=20)
    refused = store.charge(ChargeRequest("acme", 8, now=T0 + 11, **keyed))  # type: ignore[arg-type]
    assert (refused.allowed, refused.reason, refused.replayed) == (False, Reason.DEBT_OUTSTANDING, False)
    acme.grant("acme", 20)
    again = store.charge(ChargeRequest("acme", 8, now=T0 + 12, **keyed))  # type: ignore[arg-type]
    assert (again.allowed, again.replayed, again.charge_id) == (True, True, first.charge_id)
    assert store.account_state("acme").balance == 100 - 3  # 5 of the 8 from the allowance


def test_shadow_mode_would_refuse_a_debt_and_writes_nothing_but_its_count(
    acme: Admin, store: RedisStore, owe: Owe
) -> None:
    owe(debt=2)
    got = store.charge(ChargeRequest("acme", 3, now=T0 + 10, shadow=True))
    assert (got.allowed, got.reason) == (False, Reason.DEBT_OUTSTANDING)
    assert store.usage("acme", T0) == {
        "global|shadow_refused": 1,
        "global|shadow_refused:debt_outstanding": 1,
    }


def test_past_due_is_charged_until_its_grace_ends_to_the_second(
    acme: Admin, store: RedisStore, owe: Owe
) -> None:
    acme.set_status("acme", Status.PAST_DUE)
    assert charge(store, at=T0 + 10).reason is Reason.SUBSCRIPTION_INACTIVE
    owe(grace_until=T0 + 100)
    assert charge(store, at=T0 + 99).allowed
    assert charge(store, at=T0 + 100).reason is Reason.SUBSCRIPTION_INACTIVE
    assert store.account_state("acme").balance == 100  # the allowance paid the one allowed


def test_a_grace_is_only_for_past_due(acme: Admin, store: RedisStore, owe: Owe) -> None:
    owe(grace_until=T0 + 100)
    for status in (Status.SUSPENDED, Status.CANCELED):
        acme.set_status("acme", status)
        assert charge(store, at=T0 + 10).reason is Reason.SUBSCRIPTION_INACTIVE


def test_a_grace_does_not_let_a_subscription_start_early_or_outlive_its_expiry(
    acme: Admin, store: RedisStore, owe: Owe
) -> None:
    acme.subscribe("acme", "pro", status=Status.PAST_DUE, starts_at=T0 + 50, expires_at=T0 + 80)
    owe(grace_until=T0 + 1000)
    assert charge(store, at=T0 + 10).reason is Reason.SUBSCRIPTION_INACTIVE
    assert charge(store, at=T0 + 60).allowed
    assert charge(store, at=T0 + 80).reason is Reason.SUBSCRIPTION_EXPIRED


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("debt", "1e3"),
        ("debt", "-1"),
        ("frozen", "x"),
        ("grace_until", "32503680001"),
        ("debt", str(MAX_CREDITS + 1)),
    ],
)
def test_a_payments_field_that_does_not_parse_refuses_charge_and_credit_with_nothing_written(
    acme: Admin, store: RedisStore, field: str, value: str, owe: Owe, redis_client: redis.Redis
) -> None:
    owe(**{field: value})
    before = dump_keys(redis_client, ACME_KEYS)
    with pytest.raises(StoreDataError):
        store.charge(ChargeRequest("acme", 1, now=T0 + 10))
    if field == "debt":  # the only one a credit reads
        with pytest.raises(StoreDataError):
            acme.grant("acme", 5)
    assert dump_keys(redis_client, ACME_KEYS) == before


# Credits pay the debt first


def test_a_grant_pays_the_debt_first_and_the_balance_gets_the_rest(
    acme: Admin, store: RedisStore, owe: Owe
) -> None:
    owe(debt=30)
    got = acme.grant("acme", 100, idempotency_key="in_1", note="invoice 1")
    assert (got.applied, got.amount, got.debt_paid, got.debt, got.balance) == (True, 100, 30, 0, 170)
    entry = store.ledger_tail("acme", 1)[0]
    assert (entry.fields["kind"], entry.amount, entry.fields["balance"]) == ("grant", 70, "170")
    assert (entry.fields["debt_paid"], entry.fields["debt"]) == ("30", "0")
    assert acme.verify_ledger("acme").ok
    assert store.charge(ChargeRequest("acme", 1, now=T0 + 10)).allowed


def test_a_grant_below_the_debt_pays_part_of_it_and_requests_stay_refused(
    acme: Admin, store: RedisStore, owe: Owe
) -> None:
    owe(debt=50)
    got = acme.grant("acme", 20)
    assert (got.debt_paid, got.debt, got.balance) == (20, 30, 100)
    entry = store.ledger_tail("acme", 1)[0]
    assert (entry.amount, entry.fields["debt_paid"], entry.fields["debt"]) == (0, "20", "30")
    assert acme.verify_ledger("acme").ok
    refused = store.charge(ChargeRequest("acme", 1, now=T0 + 10))
    assert (refused.reason, refused.debt) == (Reason.DEBT_OUTSTANDING, 30)


def test_a_retried_grant_answers_its_first_application_and_pays_nothing_twice(
    acme: Admin, store: RedisStore, owe: Owe
) -> None:
    owe(debt=30)
    first = acme.grant("acme", 100, idempotency_key="in_1")
    owe(debt=10)  # a later reversal
    again = acme.grant("acme", 100, idempotency_key="in_1")  # the same change: not a reuse
    assert (again.applied, again.ledger_id, again.amount, again.debt_paid) == (False, first.ledger_id, 100, 0)
    assert (again.balance, again.debt) == (170, 10)
    with pytest.raises(IdempotencyKeyReused):
        acme.grant("acme", 70, idempotency_key="in_1")  # what the balance got is not what was asked


def test_a_grant_without_debt_is_as_before(acme: Admin, store: RedisStore, redis_client: redis.Redis) -> None:
    got = acme.grant("acme", 5)
    assert (got.debt_paid, got.debt, got.balance) == (0, 0, 105)
    assert "debt_paid" not in store.ledger_tail("acme", 1)[0].fields
    assert "debt" not in redis_client.hgetall(store.keys.account("acme").state)  # nothing written for it


def test_a_positive_adjustment_or_refund_pays_the_debt_first_too(
    acme: Admin, store: RedisStore, owe: Owe
) -> None:
    owe(debt=4)
    adjusted = store.credit("acme", "adjust", 3, now=T0)
    refunded = store.credit("acme", "refund", 3, now=T0)
    assert (adjusted.debt_paid, adjusted.balance, refunded.debt_paid, refunded.balance) == (3, 100, 1, 102)
    assert store.account_state("acme").debt == 0


def test_taking_credits_away_never_creates_debt(acme: Admin, store: RedisStore, owe: Owe) -> None:
    owe(debt=5)
    with pytest.raises(Conflict):
        acme.adjust_down("acme", 101)
    taken = acme.adjust_down("acme", 100)
    assert (taken.balance, taken.debt, taken.debt_paid) == (0, 5, 0)
    assert store.account_state("acme").debt == 5


def test_the_cap_is_held_against_the_balance_the_grant_leaves(
    acme: Admin, store: RedisStore, owe: Owe
) -> None:
    owe(debt=50)
    got = acme.grant("acme", MAX_CREDITS - 50)  # 100 + (MAX - 50) - 50 paid: the cap exactly
    assert (got.balance, got.debt, got.debt_paid) == (MAX_CREDITS, 0, 50)
    with pytest.raises(Conflict):
        acme.grant("acme", 1)


def test_an_imported_opening_balance_pays_the_debt_first(acme: Admin, store: RedisStore, owe: Owe) -> None:
    owe(debt=30)
    outcome = acme.import_account("acme", balance=50)
    assert (outcome.grant, outcome.balance) == (1, 120)
    assert store.account_state("acme").debt == 0
    assert acme.verify_ledger("acme").ok


def test_an_import_whose_grant_would_pass_the_cap_after_the_debt_is_refused_whole(
    acme: Admin, store: RedisStore, owe: Owe, redis_client: redis.Redis
) -> None:
    acme.grant("acme", MAX_CREDITS - 105)  # the balance: the cap less 5
    owe(debt=10)
    assert acme.import_account("acme", balance=15, idempotency_key="fits").balance == MAX_CREDITS
    before = dump_keys(redis_client, ACME_KEYS)
    with pytest.raises(Conflict):
        acme.import_account("acme", plan="pro", status=Status.CANCELED, balance=1, idempotency_key="over")
    assert dump_keys(redis_client, ACME_KEYS) == before  # the subscription neither


def test_the_account_shows_its_debt_frozen_credits_and_grace(
    acme: Admin, store: RedisStore, owe: Owe
) -> None:
    owe(debt=7, frozen=3, grace_until=T0 + 3600, status="past_due")
    view = acme.view("acme")
    assert (view.debt, view.frozen, view.grace_until, view.graced) == (7, 3, T0 + 3600, True)
    shown = view.to_json()
    assert (shown["debt"], shown["frozen"], shown["grace_until"]) == (7, 3, "2026-01-01T01:00:00Z")
    acme.set_status("acme", Status.ACTIVE)
    assert acme.view("acme").to_json()["grace_until"] is None


def test_a_refunded_charge_pays_an_open_debt_first(acme: Admin, store: RedisStore, owe: Owe) -> None:
    """A charge made before a reversal left a debt, refunded after it (the upstream failed): what goes
    back to the balance pays the debt first, as every credit does; balance and debt are never both > 0."""
    made = charge(store, cost=8)  # 5 from the allowance, 3 from the balance
    assert made.allowed
    owe(balance=0, debt=2)
    result = store.settle("acme", made.charge_id, 0, now=T0 + 20, refund=True)
    assert result.outcome == "applied"
    view = acme.account("acme")
    assert (view.balance, view.debt) == (1, 0)
    entry = list(store.ledger("acme"))[-1].fields
    assert (entry["kind"], entry["amount"], entry["debt_paid"]) == ("refund", "1", "2")
