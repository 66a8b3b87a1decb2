"""Payments in, when the event cannot be applied or the bytes are bad: over real HTTP and a real Redis.

An event signed correctly but unappliable (an account name that is empty or has a control character, an
account that does not exist, a Stripe Connect account the operator did not map) is acknowledged with an
``outcome`` naming why, logged at error level and counted, so that Stripe does not re-send it for days;
nothing is granted and no account is created unless the billing map says ``create_accounts: true``.
Bad bytes and bad headers answer 400 as a problem body, with no traceback in the log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from creditgate.core.config import RedisSettings
from creditgate.service.webhooks import generic_signature
from tests.service.test_webhooks import GENERIC, SECRET, balance, checkout, post_generic, send
from tests.service_support import ADMIN_TOKEN, READ_TOKEN, Running, running_service

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

ENV = {
    "CREDIT_GATE_ADMIN_TOKENS": ADMIN_TOKEN,
    "CREDIT_GATE_READ_TOKENS": READ_TOKEN,
    "CREDIT_GATE_STRIPE_WEBHOOK_SECRET": SECRET,
    "CREDIT_GATE_WEBHOOK_SECRET": GENERIC,
}


def serve(settings: RedisSettings, tmp_path: Path, billing_map: str) -> Any:
    billing = tmp_path / "billing.yaml"
    billing.write_text(billing_map)
    return running_service(settings, environ=ENV, billing_map=billing)


@pytest.fixture
def api(settings: RedisSettings, tmp_path: Path) -> Iterator[Running]:
    with serve(settings, tmp_path, "credits: {price_small: 1000}\n") as running:
        running.call("POST", "/v1/plans", json={"name": "pro", "allowance": 0})
        running.call("PUT", "/v1/accounts/acme/subscription", json={"plan": "pro"})
        yield running


def for_account(event_id: str, account: str, session: str = "cs_1") -> dict[str, Any]:
    return checkout(
        event_id, session, metadata={"credit_gate_account": account, "credit_gate_price": "price_small"}
    )


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
    for event_id, account in (("evt_empty", ""), ("evt_ctl", "ac\x01me"), ("evt_nl", "acme\n")):
        answer = send(api, for_account(event_id, account, session=f"cs_{event_id}"))
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
    answer = send(api, for_account("evt_typo", "acmee"))
    assert answer.status_code == 200
    assert answer.json()["outcome"] == "unknown_account" and answer.json()["account"] == "acmee"
    assert any("acmee" in line for line in errors_logged(caplog))
    assert webhook_counts(api)[("stripe", "unknown_account")] == 1
    assert account_names(api) == ["acme"]
    assert api.call("GET", "/v1/accounts/acmee").status_code == 404
    # No payment was recorded for it either: a refund of that payment finds nothing to take back.
    refund = {
        "id": "evt_r",
        "type": "refund.created",
        "data": {"object": {"id": "re_1", "payment_intent": "pi_1", "amount": 500}},
    }
    assert send(api, refund).json()["outcome"] == "no_payment"
    # Stripe re-sends it after the operator fixes the metadata elsewhere: still nothing, still 200.
    assert send(api, for_account("evt_typo", "acmee")).json()["outcome"] == "unknown_account"


def test_create_accounts_in_the_billing_map_lets_a_paid_event_open_its_account(
    settings: RedisSettings, tmp_path: Path
) -> None:
    with serve(settings, tmp_path, "credits: {price_small: 1000}\ncreate_accounts: true\n") as api:
        answer = send(api, for_account("evt_new", "newco"))
        assert answer.json()["outcome"] == "granted"
        assert balance(api, "newco") == 1000
        event = {"id": "g-1", "type": "grant", "account": "other", "amount": 5, "create": True}
        assert post_generic(api, event).json()["outcome"] == "applied"
        assert balance(api, "other") == 5


def test_create_accounts_must_be_true_or_false(tmp_path: Path) -> None:
    from creditgate.errors import ConfigError
    from creditgate.service.webhooks import WebhookSettings

    billing = tmp_path / "billing.yaml"
    billing.write_text("create_accounts: 'yes'\n")
    with pytest.raises(ConfigError, match="create_accounts"):
        WebhookSettings.load(billing, {})


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


# Stripe Connect: a connected account's events apply only when the billing map lists it.


def connect(event: dict[str, Any], account: str) -> dict[str, Any]:
    return {**event, "account": account}


def test_events_of_an_unmapped_connected_account_are_acknowledged_and_not_applied(api: Running) -> None:
    answer = send(api, connect(checkout("evt_c"), "acct_someone"))
    assert answer.status_code == 200
    assert answer.json()["outcome"] == "connect_account_not_mapped"
    assert webhook_counts(api)[("stripe", "connect_account_not_mapped")] == 1
    assert balance(api, "acme") == 0


def test_events_of_a_connected_account_listed_in_connect_accounts_apply(
    settings: RedisSettings, tmp_path: Path
) -> None:
    billing = "credits: {price_small: 1000}\nconnect_accounts: [acct_ours]\n"
    with serve(settings, tmp_path, billing) as api:
        api.call("POST", "/v1/plans", json={"name": "pro", "allowance": 0})
        api.call("PUT", "/v1/accounts/acme/subscription", json={"plan": "pro"})
        assert send(api, connect(checkout("evt_c"), "acct_ours")).json()["outcome"] == "granted"
        other = connect(checkout("evt_o", session="cs_o"), "acct_other")
        assert send(api, other).json()["outcome"] == "connect_account_not_mapped"
        assert send(api, checkout("evt_p", session="cs_p")).json()["outcome"] == "granted"  # the platform's
        assert balance(api, "acme") == 2000


def test_connect_accounts_must_be_a_list_of_account_ids(tmp_path: Path) -> None:
    from creditgate.errors import ConfigError
    from creditgate.service.webhooks import WebhookSettings

    billing = tmp_path / "billing.yaml"
    billing.write_text("connect_accounts: acct_1\n")
    with pytest.raises(ConfigError, match="connect_accounts"):
        WebhookSettings.load(billing, {})


# Bad bytes and bad headers: 400, a problem body, no traceback.


def assert_problem_400(answer: requests.Response, code: str) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert answer.json()["code"] == code


def test_a_stripe_body_that_is_not_utf8_answers_400_without_a_traceback(
    api: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = json.dumps(checkout("evt_bin")).encode().replace(b"acme", b"ac\xffme")
    assert_problem_400(send_raw(api, body, stripe_signature(body)), "malformed_body")
    assert_problem_400(send_raw(api, b"\xff\xfe", stripe_signature(b"\xff\xfe")), "malformed_body")
    assert tracebacks_logged(caplog) == []
    assert balance(api, "acme") == 0


def test_a_stripe_signature_header_with_non_ascii_bytes_answers_400_without_a_traceback(
    api: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = json.dumps(checkout("evt_h")).encode()
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
    no_id = checkout("evt_noid")
    del no_id["data"]["object"]["id"]
    odd_lines = checkout("evt_lines", session="cs_lines", line_items={"data": ["price_small", 7, None]})
    odd_refunds = {
        "id": "evt_r",
        "type": "charge.refunded",
        "data": {"object": {"id": "ch_1", "refunds": {"data": [{"id": "re_1", "amount": "500"}]}}},
    }
    odd_type = {"id": "evt_type", "type": ["invoice.paid"], "data": {"object": {}}}
    for event in (no_id, odd_lines, odd_refunds, odd_type):
        answer = send(api, event)
        assert answer.status_code == 200, answer.text
    assert send(api, no_id).json()["outcome"] == "malformed_event"
    assert tracebacks_logged(caplog) == []
