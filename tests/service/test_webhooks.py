"""Payments in, over real HTTP: Stripe events signed with Stripe's documented scheme (good, bad, stale,
re-sent, raced), refunds and disputes, unhandled events acknowledged, and the generic signed webhook.

Signatures are made here, with the stripe package's own helper (``t=<ts>,v1=<HMAC-SHA256>``); nothing
leaves the machine.
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
from tests.service_support import ADMIN_TOKEN, READ_TOKEN, Running, running_service

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

SECRET = "whsec_test_0123456789"
GENERIC = "generic-secret-0123456789"


@pytest.fixture
def api(settings: RedisSettings, tmp_path: Path) -> Iterator[Running]:
    billing = tmp_path / "billing.yaml"
    billing.write_text("credits:\n  price_small: 1000\n  prod_big: 5000\ncustomers:\n  cus_42: mapped\n")
    env = {
        "CREDIT_GATE_ADMIN_TOKENS": ADMIN_TOKEN,
        "CREDIT_GATE_READ_TOKENS": READ_TOKEN,
        "CREDIT_GATE_STRIPE_WEBHOOK_SECRET": SECRET,
        "CREDIT_GATE_WEBHOOK_SECRET": GENERIC,
    }
    with running_service(settings, environ=env, billing_map=billing) as running:
        running.call("POST", "/v1/plans", json={"name": "pro", "allowance": 0})
        for account in ("acme", "mapped"):
            running.call("PUT", f"/v1/accounts/{account}/subscription", json={"plan": "pro"})
        yield running


def send(
    api: Running, event: dict[str, Any], *, secret: str = SECRET, at: int | None = None
) -> requests.Response:
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


def checkout(event_id: str, session: str = "cs_1", **fields: Any) -> dict[str, Any]:
    obj = {
        "id": session,
        "object": "checkout.session",
        "payment_status": "paid",
        "amount_total": 2000,
        "payment_intent": "pi_1",
        "metadata": {"credit_gate_account": "acme", "credit_gate_price": "price_small"},
        **fields,
    }
    return {"id": event_id, "type": "checkout.session.completed", "data": {"object": obj}}


def invoice(event_id: str) -> dict[str, Any]:
    obj = {
        "id": "in_1",
        "object": "invoice",
        "customer": "cus_42",
        "amount_paid": 5000,
        "payment_intent": "pi_inv",
        "lines": {"data": [{"quantity": 2, "price": {"id": "price_other", "product": "prod_big"}}]},
    }
    return {"id": event_id, "type": "invoice.paid", "data": {"object": obj}}


def balance(api: Running, account: str) -> int:
    value: int = api.call("GET", f"/v1/accounts/{account}").json()["balance"]
    return value


def test_a_paid_checkout_grants_the_mapped_credits_once_however_often_stripe_resends(api: Running) -> None:
    first = send(api, checkout("evt_1"))
    assert first.status_code == 200 and first.json()["outcome"] == "granted"
    assert send(api, checkout("evt_1")).json()["outcome"] == "already_applied"
    # The same session again under another event (async payment succeeded): still once.
    other = checkout("evt_2")
    other["type"] = "checkout.session.async_payment_succeeded"
    assert send(api, other).json()["outcome"] == "already_applied"
    assert balance(api, "acme") == 1000


def test_concurrent_redeliveries_grant_once(api: Running) -> None:
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: send(api, invoice("evt_inv")), range(24)))
    assert all(a.status_code == 200 for a in answers)
    assert [a.json()["outcome"] for a in answers].count("granted") == 1
    assert balance(api, "mapped") == 10_000  # 2 units of prod_big, account from the customer mapping


def test_bad_and_stale_signatures_are_refused_and_change_nothing(api: Running) -> None:
    wrong = send(api, checkout("evt_bad"), secret="whsec_other")
    assert wrong.status_code == 400 and wrong.json()["code"] == "bad_signature"
    stale = send(api, checkout("evt_old"), at=int(time.time()) - 3600)
    assert stale.status_code == 400 and stale.json()["code"] == "bad_signature"
    unsigned = api.call("POST", "/v1/webhooks/stripe", token=None, data=b"{}")
    assert unsigned.status_code == 400
    tampered_payload = json.dumps(checkout("evt_t"))
    header = stripe.WebhookSignature.generate_signature_header(tampered_payload, SECRET)
    tampered = api.call(
        "POST",
        "/v1/webhooks/stripe",
        token=None,
        data=tampered_payload.replace("price_small", "prod_big").encode(),
        headers={"Stripe-Signature": header},
    )
    assert tampered.status_code == 400
    assert balance(api, "acme") == 0


def test_unhandled_unpaid_and_unmapped_events_are_acknowledged(api: Running) -> None:
    assert (
        send(api, {"id": "evt_x", "type": "customer.created", "data": {"object": {"id": "cus_1"}}}).json()[
            "outcome"
        ]
        == "ignored"
    )
    assert send(api, checkout("evt_u", payment_status="unpaid")).json()["outcome"] == "not_paid_yet"
    nobody = checkout("evt_n", session="cs_n", metadata={"credit_gate_price": "price_small"})
    assert send(api, nobody).json()["outcome"] == "no_account"
    unmapped = checkout("evt_m", session="cs_m", metadata={"credit_gate_account": "acme"})
    assert send(api, unmapped).json()["outcome"] == "no_mapped_price"
    assert balance(api, "acme") == 0


def test_refunds_and_disputes_take_back_the_refunded_share_once(api: Running) -> None:
    send(api, checkout("evt_1"))  # 1000 credits for 2000 (cents)
    refund = {
        "id": "evt_r",
        "type": "charge.refunded",
        "data": {
            "object": {
                "id": "ch_1",
                "payment_intent": "pi_1",
                "refunds": {"data": [{"id": "re_1", "amount": 500}]},
            }
        },
    }
    assert send(api, refund).json()["refunds"][0]["outcome"] == "adjusted"
    assert send(api, refund).json()["refunds"][0]["outcome"] == "already_applied"
    same_refund = {
        "id": "evt_r2",
        "type": "refund.created",
        "data": {"object": {"id": "re_1", "payment_intent": "pi_1", "amount": 500}},
    }
    assert send(api, same_refund).json()["outcome"] == "already_applied"
    assert balance(api, "acme") == 750
    dispute = {
        "id": "evt_d",
        "type": "charge.dispute.created",
        "data": {"object": {"id": "dp_1", "payment_intent": "pi_1", "amount": 2000}},
    }
    assert send(api, dispute).json()["outcome"] == "balance_too_low"  # 1000 to take, 750 left
    assert balance(api, "acme") == 750


def test_a_dispute_closed_as_won_gives_the_taken_credits_back_once(api: Running) -> None:
    send(api, checkout("evt_1"))  # 1000 credits for 2000 (cents)
    created = {
        "id": "evt_d",
        "type": "charge.dispute.created",
        "data": {
            "object": {"id": "dp_1", "payment_intent": "pi_1", "amount": 1000, "status": "needs_response"}
        },
    }
    assert send(api, created).json()["credits"] == -500
    assert send(api, created).json()["outcome"] == "already_applied"
    assert balance(api, "acme") == 500

    def closed(event_id: str, status: str, dispute: str = "dp_1") -> dict[str, Any]:
        obj = {"id": dispute, "object": "dispute", "payment_intent": "pi_1", "amount": 1000, "status": status}
        return {"id": event_id, "type": "charge.dispute.closed", "data": {"object": obj}}

    won = closed("evt_w", "won")
    with ThreadPoolExecutor(4) as pool:  # Stripe re-sends, also at once
        outcomes = sorted(r.json()["outcome"] for r in pool.map(lambda _: send(api, won), range(4)))
    assert outcomes == ["already_applied"] * 3 + ["given_back"]
    assert (
        send(api, closed("evt_w2", "won")).json()["outcome"] == "already_applied"
    )  # another event, same dispute
    assert balance(api, "acme") == 1000
    assert send(api, closed("evt_l", "lost", dispute="dp_2")).json()["outcome"] == "dispute_not_won"
    assert send(api, closed("evt_x", "won", dispute="dp_never")).json()["outcome"] == "nothing_taken"
    assert balance(api, "acme") == 1000


def test_refunds_can_be_turned_off(settings: RedisSettings, tmp_path: Path) -> None:
    billing = tmp_path / "billing.yaml"
    billing.write_text("credits: {price_small: 1000}\nrefunds: false\n")
    env = {"CREDIT_GATE_ADMIN_TOKENS": ADMIN_TOKEN, "CREDIT_GATE_STRIPE_WEBHOOK_SECRET": SECRET}
    with running_service(settings, environ=env, billing_map=billing) as api:
        api.call("POST", "/v1/plans", json={"name": "pro"})
        api.call("PUT", "/v1/accounts/acme/subscription", json={"plan": "pro"})
        send(api, checkout("evt_1"))
        dispute = {
            "id": "evt_d",
            "type": "charge.dispute.created",
            "data": {"object": {"id": "dp_1", "payment_intent": "pi_1", "amount": 2000}},
        }
        assert send(api, dispute).json()["outcome"] == "refunds_off"
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
    event = {"id": "inv-7", "type": "grant", "account": "acme", "amount": 300}
    assert post_generic(api, event).json()["outcome"] == "applied"
    assert post_generic(api, event).json()["outcome"] == "already_applied"
    assert (
        post_generic(api, {**event, "id": "adj-1", "type": "adjustment", "amount": 100}).json()["balance"]
        == 200
    )
    assert post_generic(api, event, secret="wrong-secret-0000").json()["code"] == "bad_signature"
    assert post_generic(api, {**event, "id": "old"}, at=int(time.time()) - 3600).status_code == 400
    assert post_generic(api, {**event, "id": "bad", "amount": 1.5}).status_code == 422
    assert balance(api, "acme") == 200


def test_a_scrape_parses_and_counts_webhooks(api: Running) -> None:
    send(api, checkout("evt_1"))
    send(api, checkout("evt_1"))
    scrape = api.call("GET", "/metrics", token=READ_TOKEN)
    assert scrape.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(scrape.text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("credit_gate_webhook_events_total", (("outcome", "granted"), ("source", "stripe")))] == 1
    assert (
        samples[("credit_gate_webhook_events_total", (("outcome", "already_applied"), ("source", "stripe")))]
        == 1
    )
    assert samples[("credit_gate_balance_credits", ())] == 1000
    assert samples[("credit_gate_accounts", ())] == 2
    assert api.call("GET", "/metrics", token=None).status_code == 401


def test_a_redis_outage_fails_the_delivery_so_stripe_retries_and_the_retry_applies_once(
    tmp_path: Path,
) -> None:
    from tests.redis_servers import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    settings = RedisSettings(host="127.0.0.1", port=server.port, connect_timeout=300, read_timeout=300)
    billing = tmp_path / "billing.yaml"
    billing.write_text("credits: {price_small: 1000}\n")
    env = {"CREDIT_GATE_ADMIN_TOKENS": ADMIN_TOKEN, "CREDIT_GATE_STRIPE_WEBHOOK_SECRET": SECRET}
    try:
        with running_service(settings, environ=env, billing_map=billing) as api:
            api.call("POST", "/v1/plans", json={"name": "pro"})
            api.call("PUT", "/v1/accounts/acme/subscription", json={"plan": "pro"})
            server.pause()
            failed = send(api, checkout("evt_1"))
            assert failed.status_code == 503 and int(failed.headers["Retry-After"]) >= 1
            server.resume()
            assert send(api, checkout("evt_1")).json()["outcome"] in ("granted", "already_applied")
            assert send(api, checkout("evt_1")).json()["outcome"] == "already_applied"
            assert balance(api, "acme") == 1000
    finally:
        server.stop()
