"""Payments in, when the event cannot be applied or the bytes are bad: over real HTTP and a real Redis.

An event signed correctly but unappliable (an account name that is empty or has a control character, an
account that does not exist, a Stripe Connect account the operator did not map, a shape Stripe never
sends) is acknowledged with an ``outcome`` naming why, logged at error level and counted, so that Stripe
does not re-send it for days; nothing is granted and no account is created unless the billing map says
``create_accounts: true``. Bad bytes and bad headers answer 400 as a problem body, with no traceback in
the log. A billing map that cannot be read is refused at start, naming the field and the form to use.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from creditgate.core.config import RedisSettings
from creditgate.errors import ConfigError
from creditgate.service.billing_map import WebhookSettings
from creditgate.service.webhooks import generic_signature
from tests.service.stripe_payloads import LATEST, charge_refunded, dispute_event, refund, refund_event
from tests.service.test_webhooks import (
    BILLING_MAP,
    GENERIC,
    SECRET,
    balance,
    open_accounts,
    pack,
    post_generic,
    send,
    serve,
)
from tests.service_support import READ_TOKEN, Running

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)


@pytest.fixture
def api(settings: RedisSettings, tmp_path: Path) -> Iterator[Running]:
    with serve(settings, tmp_path) as running:
        open_accounts(running, "acme")
        yield running


def account_names(api: Running) -> list[str]:
    answer = api.call("GET", "/v1/accounts").json()
    items = answer["accounts"] if isinstance(answer, dict) else answer
    return sorted(item["account"] if isinstance(item, dict) else item for item in items)


def webhook_counts(api: Running) -> dict[tuple[str, str], float]:
    scrape = api.call("GET", "/metrics", token=READ_TOKEN).text
    return {
        (s.labels["source"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
        if s.name == "credit_gate_webhook_events_total"
    }


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def tracebacks_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info]


def send_raw(api: Running, body: bytes, signature: str) -> requests.Response:
    return api.call(
        "POST",
        "/v1/webhooks/stripe",
        token=None,
        data=body,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
    )


def stripe_signature(body: bytes, at: int | None = None) -> str:
    stamp = at or int(time.time())
    mac = hmac.new(SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


# Unappliable events: acknowledged, logged as errors, counted; nothing granted, no account created.


def test_metadata_naming_an_empty_account_or_one_with_a_control_character_is_acknowledged_not_retried(
    api: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for n, account in enumerate(("", "ac\x01me", "acme\n")):
        answer = send(api, pack(account=account, session=f"cs_{n}", payment_intent=f"pi_{n}"))
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"] == "invalid_account"
    assert len(errors_logged(caplog)) == 3
    assert webhook_counts(api)[("stripe", "invalid_account")] == 3
    assert balance(api, "acme") == 0
    assert account_names(api) == ["acme"]


def test_a_metadata_typo_grants_nothing_and_creates_no_account(
    api: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    answer = send(api, pack(account="acmee"))
    assert answer.status_code == 200
    assert answer.json()["outcome"] == "unknown_account" and answer.json()["account"] == "acmee"
    assert any("acmee" in line for line in errors_logged(caplog))
    assert webhook_counts(api)[("stripe", "unknown_account")] == 1
    assert account_names(api) == ["acme"]
    assert api.call("GET", "/v1/accounts/acmee").status_code == 404
    # No payment was recorded for it either: a refund of it waits for a payment, taking nothing.
    assert send(api, refund_event("refund.created", amount=500)).json()["outcome"] == "waiting_for_payment"
    # Stripe re-sends it after the operator fixes the metadata elsewhere: still nothing, still 200.
    assert send(api, pack(account="acmee")).json()["outcome"] == "unknown_account"
    assert balance(api, "acme") == 0


def test_create_accounts_in_the_billing_map_lets_a_paid_event_open_its_account(
    settings: RedisSettings, tmp_path: Path
) -> None:
    with serve(settings, tmp_path, BILLING_MAP + "create_accounts: true\n") as api:
        answer = send(api, pack(account="newco"))
        assert answer.json()["outcome"] == "granted"
        assert balance(api, "newco") == 1000
        event = {"id": "g-1", "type": "grant", "account": "other", "amount": 5, "create": True}
        assert post_generic(api, event).json()["outcome"] == "applied"
        assert balance(api, "other") == 5


def test_a_refund_opens_no_account_even_with_create_accounts(settings: RedisSettings, tmp_path: Path) -> None:
    with serve(settings, tmp_path, BILLING_MAP + "create_accounts: true\n") as api:
        answer = send(api, charge_refunded(LATEST, amount_refunded=2000))
        assert answer.json()["outcome"] == "waiting_for_payment"
        assert account_names(api) == []


def test_the_generic_webhook_creates_no_account_unless_the_billing_map_allows_it(
    api: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for event in (
        {"id": "g-1", "type": "grant", "account": "acmee", "amount": 300},
        {"id": "g-2", "type": "grant", "account": "acmee", "amount": 300, "create": True},
        {"id": "g-3", "type": "adjustment", "account": "acmee", "amount": 300},
    ):
        answer = post_generic(api, event)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"] == "unknown_account"
    assert len(errors_logged(caplog)) == 3
    assert webhook_counts(api)[("generic", "unknown_account")] == 3
    assert account_names(api) == ["acme"]


def test_a_generic_event_id_sent_again_with_another_amount_is_acknowledged_and_changes_nothing(
    api: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    first = post_generic(api, {"id": "g-9", "type": "grant", "account": "acme", "amount": 300})
    assert first.status_code == 200 and first.json()["outcome"] == "applied"
    again = post_generic(api, {"id": "g-9", "type": "grant", "account": "acme", "amount": 900})
    assert again.status_code == 200, again.text  # a 409 would be re-sent for days and never apply
    assert again.json()["outcome"] == "idempotency_conflict"
    assert any("idempotency_conflict" in line for line in errors_logged(caplog))
    assert webhook_counts(api)[("generic", "idempotency_conflict")] == 1
    assert balance(api, "acme") == 300


def test_references_of_a_payment_granted_to_another_account_are_acknowledged_as_a_conflict(
    api: Running, caplog: pytest.LogCaptureFixture
) -> None:
    open_accounts(api, "other")
    assert send(api, pack()).json()["outcome"] == "granted"
    caplog.set_level(logging.INFO)
    # Another session naming the same PaymentIntent for another account: it cannot be the same payment.
    clash = send(api, pack(session="cs_other", account="other")).json()
    assert (clash["outcome"], clash["account"]) == ("payment_conflict", "acme")
    assert any("payment_conflict" in line for line in errors_logged(caplog))
    assert webhook_counts(api)[("stripe", "payment_conflict")] == 1
    assert (balance(api, "acme"), balance(api, "other")) == (1000, 0)


# Stripe Connect: a connected account's events apply only when the billing map lists it.


def connect(event: dict[str, Any], account: str) -> dict[str, Any]:
    return {**event, "account": account}


def test_events_of_an_unmapped_connected_account_are_acknowledged_and_not_applied(api: Running) -> None:
    answer = send(api, connect(pack(), "acct_someone"))
    assert answer.status_code == 200
    assert answer.json()["outcome"] == "connect_account_not_mapped"
    assert webhook_counts(api)[("stripe", "connect_account_not_mapped")] == 1
    assert balance(api, "acme") == 0
    # A refund of a connected account's charge takes nothing from the platform's payment of that id.
    assert send(api, pack()).json()["outcome"] == "granted"
    refunded = connect(charge_refunded(LATEST, amount_refunded=2000), "acct_someone")
    assert send(api, refunded).json()["outcome"] == "connect_account_not_mapped"
    assert balance(api, "acme") == 1000


def test_events_of_a_connected_account_listed_in_connect_accounts_apply(
    settings: RedisSettings, tmp_path: Path
) -> None:
    with serve(settings, tmp_path, BILLING_MAP + "connect_accounts: [acct_ours]\n") as api:
        open_accounts(api, "acme")
        assert send(api, connect(pack(), "acct_ours")).json()["outcome"] == "granted"
        other = connect(pack(session="cs_o", payment_intent="pi_o"), "acct_other")
        assert send(api, other).json()["outcome"] == "connect_account_not_mapped"
        platform = pack(session="cs_p", payment_intent="pi_p")
        assert send(api, platform).json()["outcome"] == "granted"  # the platform's own
        assert balance(api, "acme") == 2000


# The billing map: refused at start with the field and the form to use.


def load(tmp_path: Path, billing_map: str) -> WebhookSettings:
    billing = tmp_path / "billing.yaml"
    billing.write_text(billing_map)
    return WebhookSettings.load(billing, {})


RATE_FORM = "{credits: 5000, amount: 1450, currency: usd}"


def test_a_rate_written_as_a_bare_number_is_refused_naming_the_form_to_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("credits.price_small")) as refused:
        load(tmp_path, "credits: {price_small: 1000}\n")
    assert RATE_FORM in str(refused.value)
    with pytest.raises(ConfigError, match=re.escape("currencies.usd")) as refused:
        load(tmp_path, "currencies: {usd: 10}\n")
    assert RATE_FORM in str(refused.value)


@pytest.mark.parametrize(
    ("billing_map", "named"),
    [
        ("credits: {p: {credits: 10, amount: 1, currency: usd, per_unit: 1}}", "credits.p"),
        ("credits: {p: {credits: 0, amount: 1, currency: usd}}", "credits.p.credits"),
        ("credits: {p: {credits: 10, amount: 2.5, currency: usd}}", "credits.p.amount"),
        ("credits: {p: {credits: true, amount: 1, currency: usd}}", "credits.p.credits"),
        ("credits: {p: {credits: 10, amount: 1}}", "credits.p.currency"),
        ("credits: {p: {credits: 10, amount: 1, currency: dollars}}", "credits.p.currency"),
        ("credits: {p: {credits: 10000000000000000, amount: 1, currency: usd}}", "credits.p.credits"),
        ("currencies: {us: {credits: 10, amount: 1}}", "currencies.us.currency"),
        ("plans: [pro]", "plans"),
        ("past_due_grace: -1", "past_due_grace"),
        ("create_accounts: 'yes'", "create_accounts"),
        ("connect_accounts: acct_1", "connect_accounts"),
        ("connect_accounts: [cus_1]", "connect_accounts"),
    ],
)
def test_a_billing_map_field_that_cannot_be_read_is_refused_naming_it(
    tmp_path: Path, billing_map: str, named: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        load(tmp_path, billing_map + "\n")


def test_rates_are_read_as_credits_per_amount_in_a_currency(tmp_path: Path) -> None:
    read = load(tmp_path, BILLING_MAP + "currencies: {EUR: {credits: 1, amount: 1}}\n")
    assert (read.credits["price_small"].credits, read.credits["price_small"].amount) == (1000, 2000)
    assert read.credits["prod_big"].currency == "usd"
    assert (read.currencies["eur"].credits, read.currencies["eur"].currency) == (1, "eur")


# Bad bytes and bad headers: 400, a problem body, no traceback.


def assert_problem_400(answer: requests.Response, code: str) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert answer.json()["code"] == code


def test_a_stripe_body_that_is_not_utf8_answers_400_without_a_traceback(
    api: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = json.dumps(pack()).encode().replace(b"acme", b"ac\xffme")
    assert_problem_400(send_raw(api, body, stripe_signature(body)), "malformed_body")
    assert_problem_400(send_raw(api, b"\xff\xfe", stripe_signature(b"\xff\xfe")), "malformed_body")
    assert tracebacks_logged(caplog) == []
    assert balance(api, "acme") == 0


def test_a_stripe_signature_header_with_non_ascii_bytes_answers_400_without_a_traceback(
    api: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = json.dumps(pack()).encode()
    stamp = int(time.time())
    for header in (f"t={stamp},v1=\xb2\xb2", "t=\xb2,v1=abc", "t=" + "9" * 5000 + ",v1=abc"):
        assert_problem_400(send_raw(api, body, header), "bad_signature")
    assert tracebacks_logged(caplog) == []


def test_a_generic_webhook_timestamp_that_is_not_plain_digits_answers_400_without_a_traceback(
    api: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = json.dumps({"id": "g-1", "type": "grant", "account": "acme", "amount": 1}).encode()
    for stamp in ("\xb2", "9" * 5000, "1" * 20, "+" + str(int(time.time()))):
        answer = api.call(
            "POST",
            "/v1/webhooks/generic",
            token=None,
            data=body,
            headers={
                "Webhook-Timestamp": stamp,
                "Webhook-Signature": generic_signature(GENERIC, stamp, body),
            },
        )
        assert_problem_400(answer, "bad_signature")
    assert tracebacks_logged(caplog) == []
    assert balance(api, "acme") == 0


def test_a_generic_body_that_is_not_utf8_answers_400(api: Running) -> None:
    body, stamp = b'{"id": "\xff"}', str(int(time.time()))
    answer = api.call(
        "POST",
        "/v1/webhooks/generic",
        token=None,
        data=body,
        headers={"Webhook-Timestamp": stamp, "Webhook-Signature": generic_signature(GENERIC, stamp, body)},
    )
    assert_problem_400(answer, "malformed_body")


def test_signed_stripe_events_of_an_unexpected_shape_are_acknowledged_not_failed(
    api: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    no_id = pack()
    del no_id["data"]["object"]["id"]
    odd_lines = pack(session="cs_lines")
    odd_lines["data"]["object"]["line_items"] = {"object": "list", "data": ["price_small", 7, None]}
    float_total = pack(session="cs_float")
    float_total["data"]["object"]["amount_total"] = 2000.0
    odd_refund = refund(amount=500)
    odd_refund["amount"] = "500"
    odd_refunds = charge_refunded(LATEST, expanded=True, refunds=[odd_refund], amount_refunded=500)
    odd_status = dispute_event("charge.dispute.closed", "forgiven")
    no_object = {**pack(session="cs_none"), "data": {"object": ["cs_none"]}}
    for event in (no_id, odd_lines, float_total, odd_refunds, odd_status, no_object):
        answer = send(api, event)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"] == "malformed_event", answer.text
    odd_type = {**pack(session="cs_type"), "type": ["invoice.paid"]}
    assert send(api, odd_type).json()["outcome"] == "ignored"
    assert tracebacks_logged(caplog) == []
    assert webhook_counts(api)[("stripe", "malformed_event")] == 6
    assert balance(api, "acme") == 0
