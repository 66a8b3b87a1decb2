"""Payments in, over real HTTP: Stripe events signed with Stripe's documented scheme (good, bad, stale,
re-sent, raced), refunds and disputes moving a payment's credits, unhandled events acknowledged, and the
generic signed webhook.

Events are built in the API versions' documented shapes (``tests/service/stripe_payloads.py``) and
signed here with the stripe package's own helper (``t=<ts>,v1=<HMAC-SHA256>``); nothing leaves the
machine. The issue's numbered cases are in ``test_stripe_payments.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe
from prometheus_client.parser import text_string_to_metric_families

from creditgate.core.config import RedisSettings
from creditgate.service.webhooks import generic_signature
from tests.service.stripe_payloads import (
    CREATED,
    LATEST,
    Line,
    charge_refunded,
    checkout_session,
    dispute_event,
    event,
    invoice_paid,
    refund_event,
)
from tests.service_support import ADMIN_TOKEN, READ_TOKEN, Running, running_service

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

SECRET = "whsec_test_0123456789"
GENERIC = "generic-secret-0123456789"
ENV = {
    "CREDIT_GATE_ADMIN_TOKENS": ADMIN_TOKEN,
    "CREDIT_GATE_READ_TOKENS": READ_TOKEN,
    "CREDIT_GATE_STRIPE_WEBHOOK_SECRET": SECRET,
    "CREDIT_GATE_WEBHOOK_SECRET": GENERIC,
}
# 1,000 credits for every $20.00 paid for price_small; 5,000 for every $25.00 of product prod_big.
BILLING_MAP = """
credits:
  price_small: {credits: 1000, amount: 2000, currency: usd}
  prod_big: {credits: 5000, amount: 2500, currency: usd}
customers:
  cus_42: mapped
"""


def serve(settings: RedisSettings, tmp_path: Path, billing_map: str = BILLING_MAP) -> Any:
    """The real service on ``settings``' Redis with this billing map and both webhook secrets."""
    billing = tmp_path / "billing.yaml"
    billing.write_text(billing_map)
    return running_service(settings, environ=ENV, billing_map=billing)


def open_accounts(api: Running, *accounts: str) -> None:
    """Accounts on a plan with no allowance: what they can spend is their balance."""
    api.call("POST", "/v1/plans", json={"name": "pro", "allowance": 0})
    for account in accounts:
        answer = api.call("PUT", f"/v1/accounts/{account}/subscription", json={"plan": "pro"})
        assert answer.status_code in (200, 201), answer.text


@pytest.fixture
def api(settings: RedisSettings, tmp_path: Path) -> Iterator[Running]:
    with serve(settings, tmp_path) as running:
        open_accounts(running, "acme", "mapped")
        yield running


def send(
    api: Running, event: dict[str, Any], *, secret: str = SECRET, at: int | None = None
) -> requests.Response:
    """``event`` as Stripe delivers it: the JSON body, signed at ``at`` (now by default)."""
    payload = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(
        payload, secret, timestamp=at or int(time.time())
    )
    return api.call(
        "POST",
        "/v1/webhooks/stripe",
        token=None,
        data=payload.encode(),
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )


def outcome(api: Running, event: dict[str, Any]) -> str:
    answer = send(api, event)
    assert answer.status_code == 200, answer.text
    found: str = answer.json()["outcome"]
    return found


def balance(api: Running, account: str) -> int:
    value: int = api.call("GET", f"/v1/accounts/{account}").json()["balance"]
    return value


def pack(**fields: Any) -> dict[str, Any]:
    """A paid one-off Checkout session of $20.00 for acme, rated by price_small: 1,000 credits."""
    return checkout_session(**{"price": "price_small", "amount_total": 2000, **fields})


def test_a_paid_checkout_grants_the_credits_its_payment_bought_once_however_often_stripe_resends(
    api: Running,
) -> None:
    first = send(api, pack())
    assert first.status_code == 200, first.text
    assert (first.json()["outcome"], first.json()["credits"]) == ("granted", 1000)
    assert outcome(api, pack()) == "already_applied"
    # The same session under another event (a delayed payment that succeeded): the same payment.
    assert outcome(api, pack(event_type="checkout.session.async_payment_succeeded")) == "already_applied"
    assert balance(api, "acme") == 1000


def test_concurrent_redeliveries_grant_once(api: Running) -> None:
    paid = invoice_paid(
        LATEST,
        [Line(5000, price="price_other", product="prod_big", quantity=2)],
        invoice="in_42",
        customer="cus_42",
        account=None,
    )
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: send(api, paid), range(24)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert sorted(a.json()["outcome"] for a in answers) == ["already_applied"] * 23 + ["granted"]
    # $50.00 of prod_big (the price is not mapped, its product is), the account from the customers map.
    assert balance(api, "mapped") == 10_000


def test_different_events_of_one_payment_raced_grant_it_once(api: Running) -> None:
    """A one-off session, its async success and the invoice it created: one payment, whoever is first."""
    events = [
        pack(invoice="in_7"),
        pack(invoice="in_7", event_type="checkout.session.async_payment_succeeded"),
        invoice_paid(LATEST, [Line(2000, price="price_small")], invoice="in_7"),
    ] * 6
    with ThreadPoolExecutor(12) as pool:
        outcomes = sorted(pool.map(lambda e: outcome(api, e), events))
    assert outcomes == ["already_applied"] * 17 + ["granted"]
    assert balance(api, "acme") == 1000


def test_bad_and_stale_signatures_are_refused_and_change_nothing(api: Running) -> None:
    wrong = send(api, pack(), secret="whsec_other")
    assert wrong.status_code == 400 and wrong.json()["code"] == "bad_signature"
    stale = send(api, pack(), at=int(time.time()) - 3600)
    assert stale.status_code == 400 and stale.json()["code"] == "bad_signature"
    unsigned = api.call("POST", "/v1/webhooks/stripe", token=None, data=b"{}")
    assert unsigned.status_code == 400
    payload = json.dumps(pack())
    header = stripe.WebhookSignature.generate_signature_header(payload, SECRET)
    tampered = api.call(
        "POST",
        "/v1/webhooks/stripe",
        token=None,
        data=payload.replace('"amount_total": 2000', '"amount_total": 9000').encode(),
        headers={"Stripe-Signature": header},
    )
    assert tampered.status_code == 400 and tampered.json()["code"] == "bad_signature"
    assert balance(api, "acme") == 0


def test_unhandled_unpaid_and_unmapped_events_are_acknowledged_and_grant_nothing(api: Running) -> None:
    assert outcome(api, event("customer.created", {"id": "cus_1", "object": "customer"})) == "ignored"
    assert outcome(api, pack(payment_status="unpaid")) == "not_paid_yet"
    assert outcome(api, pack(session="cs_n", account=None)) == "no_account"
    assert outcome(api, checkout_session(session="cs_m")) == "no_mapped_price"  # no price metadata
    assert outcome(api, pack(session="cs_e", currency="eur")) == "currency_not_mapped"
    assert outcome(api, pack(session="cs_s", mode="setup")) == "nothing_paid"
    assert balance(api, "acme") == 0


def test_an_event_of_an_api_version_not_read_is_acknowledged_as_unsupported(api: Running) -> None:
    for version in ("2020-08-27", "2099-01-01.zeta", None):
        stale_shape = pack()
        stale_shape["api_version"] = version
        assert outcome(api, stale_shape) == "unsupported_api_version"
    assert balance(api, "acme") == 0
    assert outcome(api, pack()) == "granted"  # the same payment in a version that is read


def test_refunds_take_back_the_refunded_share_once_whichever_event_reports_them(api: Running) -> None:
    assert outcome(api, pack()) == "granted"  # 1,000 credits for $20.00
    # Since 2022-11-15 charge.refunded does not list its refunds: the charge's refunded total tells.
    refunded = send(api, charge_refunded(LATEST, amount_refunded=500)).json()
    assert (refunded["outcome"], refunded["taken"], refunded["balance"]) == ("reversed", 250, 750)
    assert outcome(api, charge_refunded(LATEST, amount_refunded=500)) == "already_applied"
    # The same refund, now known by its id: it is the refunded total, not more.
    assert outcome(api, refund_event("refund.created", "succeeded", amount=500)) == "recorded"
    assert outcome(api, refund_event("refund.updated", "succeeded", amount=500)) == "already_applied"
    assert balance(api, "acme") == 750
    # A dispute of the whole charge holds what is left of it, and takes it when lost.
    opened = send(api, dispute_event("charge.dispute.created", "needs_response", amount=2000)).json()
    assert (opened["outcome"], opened["held"], opened["balance"], opened["frozen"]) == (
        "reversed",
        750,
        0,
        750,
    )
    lost = send(api, dispute_event("charge.dispute.closed", "lost", amount=2000, created=CREATED + 60)).json()
    assert (lost["taken"], lost["held"], lost["balance"], lost["frozen"], lost["debt"]) == (
        750,
        -750,
        0,
        0,
        0,
    )
    assert balance(api, "acme") == 0


def test_a_dispute_won_releases_its_credits_once_even_when_stripe_resends_at_once(api: Running) -> None:
    assert outcome(api, pack()) == "granted"  # 1,000 credits for $20.00
    opened = send(api, dispute_event("charge.dispute.created", "needs_response", amount=1000)).json()
    assert (opened["held"], opened["balance"], opened["frozen"]) == (500, 500, 500)
    assert (
        outcome(api, dispute_event("charge.dispute.created", "needs_response", amount=1000))
        == "already_applied"
    )
    won = dispute_event("charge.dispute.closed", "won", amount=1000, created=CREATED + 60)
    with ThreadPoolExecutor(4) as pool:
        outcomes = sorted(r.json()["outcome"] for r in pool.map(lambda _: send(api, won), range(4)))
    assert outcomes == ["already_applied"] * 3 + ["reversed"]
    # Another event about the same dispute, and an older one arriving late: nothing moves.
    again = dispute_event("charge.dispute.funds_reinstated", "won", amount=1000, created=CREATED + 60)
    assert outcome(api, again) == "already_applied"
    late = dispute_event("charge.dispute.updated", "under_review", amount=1000, created=CREATED + 30)
    assert outcome(api, late) == "already_applied"
    account = api.call("GET", "/v1/accounts/acme").json()
    assert (account["balance"], account["frozen"], account["debt"]) == (1000, 0, 0)


def test_refunds_can_be_turned_off(settings: RedisSettings, tmp_path: Path) -> None:
    with serve(settings, tmp_path, BILLING_MAP + "refunds: false\n") as api:
        open_accounts(api, "acme")
        assert outcome(api, pack()) == "granted"
        assert outcome(api, dispute_event("charge.dispute.closed", "lost")) == "refunds_off"
        assert outcome(api, charge_refunded(LATEST, amount_refunded=2000)) == "refunds_off"
        assert balance(api, "acme") == 1000


def post_generic(
    api: Running, event: dict[str, Any], *, secret: str = GENERIC, at: int | None = None
) -> requests.Response:
    body = json.dumps(event).encode()
    stamp = str(at or int(time.time()))
    return api.call(
        "POST",
        "/v1/webhooks/generic",
        token=None,
        data=body,
        headers={"Webhook-Timestamp": stamp, "Webhook-Signature": generic_signature(secret, stamp, body)},
    )


def test_the_generic_webhook_applies_each_signed_event_once(api: Running) -> None:
    grant = {"id": "inv-7", "type": "grant", "account": "acme", "amount": 300}
    assert post_generic(api, grant).json()["outcome"] == "applied"
    assert post_generic(api, grant).json()["outcome"] == "already_applied"
    adjustment = {**grant, "id": "adj-1", "type": "adjustment", "amount": 100}
    assert post_generic(api, adjustment).json()["balance"] == 200
    assert post_generic(api, grant, secret="wrong-secret-0000").json()["code"] == "bad_signature"
    assert post_generic(api, {**grant, "id": "old"}, at=int(time.time()) - 3600).status_code == 400
    assert post_generic(api, {**grant, "id": "bad", "amount": 1.5}).status_code == 422
    assert balance(api, "acme") == 200


def webhook_samples(api: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    scrape = api.call("GET", "/metrics", token=READ_TOKEN)
    assert scrape.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scrape.text)
        for s in family.samples
    }


def test_a_scrape_parses_and_counts_webhooks_by_outcome(api: Running) -> None:
    send(api, pack())
    send(api, pack())
    send(api, pack(session="cs_n", account=None))
    samples = webhook_samples(api)
    counted = "credit_gate_webhook_events_total"
    assert samples[(counted, (("outcome", "granted"), ("source", "stripe")))] == 1
    assert samples[(counted, (("outcome", "already_applied"), ("source", "stripe")))] == 1
    assert samples[(counted, (("outcome", "no_account"), ("source", "stripe")))] == 1
    assert samples[("credit_gate_balance_credits", ())] == 1000
    assert samples[("credit_gate_accounts", ())] == 2
    assert api.call("GET", "/metrics", token=None).status_code == 401


def test_a_redis_outage_fails_the_delivery_so_stripe_retries_and_the_retry_applies_once(
    tmp_path: Path,
) -> None:
    from tests.redis_servers import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    settings = RedisSettings(host="127.0.0.1", port=server.port, connect_timeout=300, read_timeout=300)
    try:
        with serve(settings, tmp_path) as api:
            open_accounts(api, "acme")
            server.pause()
            failed = send(api, pack())
            assert failed.status_code == 503 and int(failed.headers["Retry-After"]) >= 1
            server.resume()
            assert outcome(api, pack()) in ("granted", "already_applied")
            assert outcome(api, pack()) == "already_applied"
            assert balance(api, "acme") == 1000
    finally:
        server.stop()
