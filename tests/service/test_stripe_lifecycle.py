"""A subscription's lifecycle from Stripe, over real HTTP: signed events (in the API versions' shapes) make
the account past_due with a grace, active again when paid, canceled, moved to another plan, active at the
end of a trial; late and re-sent events change nothing; events that can never apply are acknowledged.

The gate's view is checked with the store's own charge at chosen times, so the grace's end is exact.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe

from creditgate.core.config import RedisSettings
from creditgate.core.decision import Reason
from creditgate.core.model import Plan, Status
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.store.lifecycle import lifecycle_state
from tests.service.stripe_payloads import (
    ACCOUNT_KEY,
    BASIL,
    CREATED,
    LATEST,
    Line,
    event,
    invoice_paid,
    is_basil,
)
from tests.service_support import ADMIN_TOKEN, READ_TOKEN, Running, running_service

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

SECRET = "whsec_test_0123456789"
GRACE = 3_600
OLD = "2024-06-20"  # before basil: invoices name their subscription at the top level
BILLING_MAP = f"""
credits:
  price_credits: {{credits: 1000, amount: 2000, currency: usd}}
plans:
  price_basic: basic
  price_pro: pro
  price_gone: retired
customers:
  cus_1: acme
past_due_grace: {GRACE}
"""


def start(settings: RedisSettings, tmp_path: Path, billing_map: str = BILLING_MAP) -> Any:
    billing = tmp_path / "billing.yaml"
    billing.write_text(billing_map)
    env = {
        "CREDIT_GATE_ADMIN_TOKENS": ADMIN_TOKEN,
        "CREDIT_GATE_READ_TOKENS": READ_TOKEN,
        "CREDIT_GATE_STRIPE_WEBHOOK_SECRET": SECRET,
    }
    return running_service(settings, environ=env, billing_map=billing)


@pytest.fixture
def api(settings: RedisSettings, tmp_path: Path, admin: Admin) -> Iterator[Running]:
    """The service, with plans basic and pro, and acme active on basic since a day before CREATED."""
    admin.apply_plan(Plan("basic", period=Period.MONTH, allowance=100))
    admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=1_000))
    admin.subscribe("acme", "basic", starts_at=CREATED - 86_400)
    with start(settings, tmp_path) as running:
        yield running


def send(api: Running, payload: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(payload)
    header = stripe.WebhookSignature.generate_signature_header(body, SECRET, timestamp=int(time.time()))
    answer: requests.Response = api.call(
        "POST",
        "/v1/webhooks/stripe",
        token=None,
        data=body.encode(),
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    ack: dict[str, Any] = answer.json()
    return ack


def subscription_event(
    event_type: str,
    status: str,
    price: str = "price_basic",
    *,
    version: str = LATEST,
    created: int = CREATED,
    account: str | None = "acme",
    customer: str = "cus_1",
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A customer.subscription.* event around a one-item Subscription in the version's shape: since
    basil the billing period is the item's (current_period_start/end), before it the subscription's,
    with the legacy ``plan`` beside each ``price``."""
    period = {"current_period_start": CREATED - 86_400, "current_period_end": CREATED + 29 * 86_400}
    price_object = {
        "id": price,
        "object": "price",
        "active": True,
        "currency": "usd",
        "product": "prod_plan",
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
        "type": "recurring",
        "unit_amount": 2900,
    }
    item: dict[str, Any] = {
        "id": "si_1",
        "object": "subscription_item",
        "created": CREATED - 86_400,
        "metadata": {},
        "price": price_object,
        "quantity": 1,
        "subscription": "sub_1",
    }
    obj: dict[str, Any] = {
        "id": "sub_1",
        "object": "subscription",
        "billing_cycle_anchor": CREATED - 86_400,
        "cancel_at_period_end": False,
        "canceled_at": created if status == "canceled" else None,
        "collection_method": "charge_automatically",
        "created": CREATED - 86_400,
        "currency": "usd",
        "customer": customer,
        "ended_at": created if status == "canceled" else None,
        "items": {"object": "list", "data": [item], "has_more": False, "url": "/v1/subscription_items"},
        "latest_invoice": "in_1",
        "livemode": False,
        "metadata": {ACCOUNT_KEY: account} if account is not None else {},
        "start_date": CREATED - 86_400,
        "status": status,
        "trial_end": None,
        "trial_start": None,
    }
    plan_object = {"id": price, "object": "plan", "active": True, "amount": 2900, "interval": "month"}
    if is_basil(version):
        item.update(period)
    else:
        obj.update(period)
        item["plan"] = plan_object
        obj["plan"] = plan_object
    return event(event_type, obj, version, created=created, previous_attributes=previous)


def payment_failed(version: str = LATEST, created: int = CREATED) -> dict[str, Any]:
    return invoice_paid(
        version, [Line(2900, price="price_basic")], 0, event_type="invoice.payment_failed", created=created
    )


def gate(admin: Admin, at: int, account: str = "acme") -> Reason | None:
    """What a request of ``account`` at ``at`` gets: None when let through, else the refusal's reason."""
    result = admin.store.charge(ChargeRequest(account, 1, now=at))
    return None if result.allowed else result.reason


@pytest.mark.parametrize("version", [OLD, BASIL, LATEST])
def test_a_failed_payment_makes_the_account_past_due_and_the_gate_lets_it_through_until_the_grace_ends(
    api: Running, admin: Admin, version: str
) -> None:
    ack = send(api, payment_failed(version))
    assert ack["outcome"] == "applied"
    assert (ack["account"], ack["previous_status"], ack["status"]) == ("acme", "active", "past_due")
    assert ack["grace_until"] == CREATED + GRACE
    assert lifecycle_state(admin.store, "acme").grace_until == CREATED + GRACE
    assert gate(admin, CREATED + 10) is None
    assert gate(admin, CREATED + GRACE - 1) is None
    assert gate(admin, CREATED + GRACE) is Reason.SUBSCRIPTION_INACTIVE


def test_the_invoice_paid_after_a_failure_makes_the_account_active_again(api: Running, admin: Admin) -> None:
    send(api, payment_failed(created=CREATED))
    paid = send(api, invoice_paid(LATEST, [Line(2000)], created=CREATED + 600))
    assert (paid["outcome"], paid["subscription"]) == ("granted", "reactivated")
    assert admin.account("acme").status == "active"
    assert lifecycle_state(admin.store, "acme").grace_until == 0
    assert gate(admin, CREATED + 10 * GRACE) is None


def test_a_failure_delivered_after_the_later_payment_changes_nothing(api: Running, admin: Admin) -> None:
    paid = send(api, invoice_paid(LATEST, [Line(2000)], created=CREATED + 600))
    assert paid["subscription"] == "unchanged"  # active already; the time is kept all the same
    late = send(api, payment_failed(created=CREATED))
    assert (late["outcome"], late["stripe_subscription_at"]) == ("stale", CREATED + 600)
    assert admin.account("acme").status == "active"


def test_a_deleted_subscription_cancels_the_account_and_its_requests_are_refused(
    api: Running, admin: Admin
) -> None:
    ack = send(api, subscription_event("customer.subscription.deleted", "canceled", created=CREATED + 5))
    assert (ack["outcome"], ack["status"], ack["plan"]) == ("applied", "canceled", "basic")
    assert gate(admin, CREATED + 6) is Reason.SUBSCRIPTION_INACTIVE
    assert (
        send(api, subscription_event("customer.subscription.deleted", "canceled", created=CREATED + 5))[
            "outcome"
        ]
        == "unchanged"
    )


@pytest.mark.parametrize("version", [OLD, LATEST])
def test_an_update_to_another_price_moves_the_account_to_its_plan(
    api: Running, admin: Admin, version: str
) -> None:
    ack = send(
        api, subscription_event("customer.subscription.updated", "active", "price_pro", version=version)
    )
    assert (ack["outcome"], ack["previous_plan"], ack["plan"]) == ("applied", "basic", "pro")
    account = admin.account("acme")
    assert (account.plan, account.allowance) == ("pro", 1_000)
    assert admin.plan_subscribers("pro") == ["acme"]


def test_an_unmapped_price_keeps_the_plan_with_a_warning(
    api: Running, admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "creditgate.service"):
        ack = send(api, subscription_event("customer.subscription.updated", "past_due", "price_other"))
    assert (ack["outcome"], ack["status"], ack["plan"]) == ("applied", "past_due", "basic")
    assert any("price_other" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.parametrize("version", [OLD, LATEST])
def test_the_end_of_a_trial_makes_the_account_active(api: Running, admin: Admin, version: str) -> None:
    admin.set_status("acme", Status.TRIALING)
    ended = subscription_event(
        "customer.subscription.updated", "active", version=version, previous={"status": "trialing"}
    )
    ack = send(api, ended)
    assert (ack["previous_status"], ack["status"]) == ("trialing", "active")


@pytest.mark.parametrize(
    ("stripe_status", "status"),
    [
        ("unpaid", "suspended"),
        ("paused", "suspended"),
        ("incomplete", "suspended"),
        ("incomplete_expired", "canceled"),
        ("past_due", "past_due"),
        ("trialing", "trialing"),
    ],
)
def test_stripes_statuses_map_to_credit_gates(
    api: Running, admin: Admin, stripe_status: str, status: str
) -> None:
    ack = send(api, subscription_event("customer.subscription.updated", stripe_status))
    assert ack["status"] == status and admin.account("acme").status == status


def test_events_out_of_order_end_in_the_newest_state(api: Running, admin: Admin) -> None:
    """Stripe's order: upgraded to pro (T+10), then canceled (T+20); delivered the other way round, and
    the upgrade re-sent once more."""
    upgraded = subscription_event(
        "customer.subscription.updated", "active", "price_pro", created=CREATED + 10
    )
    canceled = subscription_event(
        "customer.subscription.deleted", "canceled", "price_pro", created=CREATED + 20
    )
    assert send(api, canceled)["outcome"] == "applied"
    assert send(api, upgraded)["outcome"] == "stale"
    assert send(api, upgraded)["outcome"] == "stale"
    account = admin.account("acme")
    assert (account.plan, account.status) == ("basic", "canceled")
    assert lifecycle_state(admin.store, "acme").stripe_subscription_at == CREATED + 20


def test_an_account_without_a_subscription_is_subscribed_when_its_stripe_subscription_is_active(
    api: Running, admin: Admin
) -> None:
    admin.grant("newco", 10)
    pending = subscription_event("customer.subscription.created", "incomplete", "price_pro", account="newco")
    assert send(api, pending)["outcome"] == "no_subscription"
    assert admin.account("newco").plan == ""
    active = subscription_event(
        "customer.subscription.updated", "active", "price_pro", account="newco", created=CREATED + 30
    )
    ack = send(api, active)
    assert (ack["outcome"], ack["plan"], ack["status"]) == ("subscribed", "pro", "active")
    account = admin.account("newco")
    assert (account.starts_at, account.anchor, account.balance) == (CREATED - 86_400, CREATED - 86_400, 10)
    assert gate(admin, CREATED + 31, "newco") is None


def test_no_account_is_opened_unless_the_billing_map_says_so(
    settings: RedisSettings, tmp_path: Path, admin: Admin
) -> None:
    admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=1_000))
    active = subscription_event("customer.subscription.created", "active", "price_pro", account="fresh")
    with start(settings, tmp_path) as api:
        assert send(api, active)["outcome"] == "unknown_account"
    assert "fresh" not in admin.store.account_names()
    with start(settings, tmp_path, BILLING_MAP + "create_accounts: true\n") as api:
        assert send(api, active)["outcome"] == "subscribed"
    assert admin.account("fresh").plan == "pro"


@pytest.mark.parametrize(
    ("payload", "outcome"),
    [
        (subscription_event("customer.subscription.updated", "active", "price_gone"), "unknown_plan"),
        (subscription_event("customer.subscription.updated", "active", account="ghost"), "unknown_account"),
        (
            subscription_event("customer.subscription.updated", "active", account=None, customer="cus_x"),
            "no_account",
        ),
        (
            subscription_event("customer.subscription.updated", "active", account="bad\nname"),
            "invalid_account",
        ),
        (subscription_event("customer.subscription.updated", "resting"), "unknown_status"),
    ],
    ids=["unknown_plan", "unknown_account", "no_account", "invalid_account", "unknown_status"],
)
def test_events_that_can_never_apply_are_acknowledged_with_an_error_log(
    api: Running, admin: Admin, caplog: pytest.LogCaptureFixture, payload: dict[str, Any], outcome: str
) -> None:
    with caplog.at_level(logging.ERROR, "creditgate.service"):
        assert send(api, payload)["outcome"] == outcome
    assert any(outcome in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    account = admin.account("acme")
    assert (account.plan, account.status) == ("basic", "active")
