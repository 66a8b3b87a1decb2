"""The problem bodies and headers the gate answers with, with plain values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from creditgate.core.decision import (
    ChargeResult,
    Reason,
    client_headers,
    failure,
    refusal,
    upstream_headers,
)

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "problem.schema.json").read_text())
NOW = 1_767_225_600
BASE = "urn:credit-gate:problem:"


def validate_problem(body: dict[str, Any]) -> None:
    jsonschema.validate(body, SCHEMA, format_checker=jsonschema.FormatChecker())


def result(reason: Reason | None, **changes: Any) -> ChargeResult:
    values: dict[str, Any] = dict(
        allowed=reason is None,
        reason=reason,
        plan="pro",
        status="active",
        cost=3,
        balance=1,
        allowance=100,
        allowance_remaining=0,
        period_end=NOW + 3600,
        starts_at=NOW - 86_400,
        expires_at=0,
        now=NOW,
        from_allowance=0,
        from_balance=0,
        charge_id="",
    )
    values.update(changes)
    return ChargeResult(**values)


PAYMENT_REASONS = [
    Reason.NO_SUBSCRIPTION,
    Reason.SUBSCRIPTION_INACTIVE,
    Reason.SUBSCRIPTION_EXPIRED,
    Reason.PLAN_NOT_ENTITLED,
    Reason.DEBT_OUTSTANDING,
    Reason.QUOTA_EXHAUSTED,
    Reason.INSUFFICIENT_CREDIT,
]


@pytest.mark.parametrize("reason", PAYMENT_REASONS)
def test_every_refusal_is_a_valid_402_problem(reason: Reason) -> None:
    problem = refusal(
        result(reason), type_base=BASE, payment_url="https://pay.example/top-up", entitled=["team"]
    )
    assert problem.status == 402
    assert problem.headers["Content-Type"] == "application/problem+json"
    assert problem.body["type"] == BASE + reason.value
    assert problem.body["reason"] == reason.value
    validate_problem(problem.body)


def test_insufficient_credit_tells_the_cost_the_balance_and_where_to_pay() -> None:
    problem = refusal(result(Reason.INSUFFICIENT_CREDIT), type_base=BASE, payment_url="https://pay.example/")
    assert problem.body["cost"] == 3 and problem.body["balance"] == 1
    assert problem.body["payment_url"] == "https://pay.example/"
    assert "costs 3 credits" in problem.body["detail"] and "Top up" in problem.body["detail"]
    assert "Retry-After" not in problem.headers


def test_debt_outstanding_tells_what_is_owed_and_that_the_next_credit_pays_it_first() -> None:
    problem = refusal(
        result(Reason.DEBT_OUTSTANDING, debt=120, balance=0),
        type_base=BASE,
        payment_url="https://pay.example/",
    )
    assert (problem.status, problem.body["title"]) == (402, "Debt outstanding")
    detail = problem.body["detail"]
    assert "owes 120 credits" in detail and "next credit or payment pays it first" in detail
    assert "Retry-After" not in problem.headers  # it lifts when someone pays, not by itself
    assert (
        "owes 1 credit:"
        in refusal(result(Reason.DEBT_OUTSTANDING, debt=1), type_base=BASE, payment_url=None).body["detail"]
    )
    validate_problem(problem.body)


def test_quota_exhausted_says_when_it_renews_with_retry_after() -> None:
    problem = refusal(result(Reason.QUOTA_EXHAUSTED), type_base=BASE, payment_url=None)
    assert problem.headers["Retry-After"] == "3600"
    assert problem.body["period_end"] == "2026-01-01T01:00:00Z"


def test_a_subscription_that_starts_later_says_when_with_retry_after() -> None:
    problem = refusal(
        result(Reason.SUBSCRIPTION_INACTIVE, starts_at=NOW + 60), type_base=BASE, payment_url=None
    )
    assert problem.headers["Retry-After"] == "60"
    assert "starts at" in problem.body["detail"]


def test_plan_not_entitled_names_the_plans_that_include_the_route() -> None:
    problem = refusal(
        result(Reason.PLAN_NOT_ENTITLED), type_base=BASE, payment_url=None, entitled=["team", "ent"]
    )
    assert problem.body["plans"] == ["team", "ent"]
    assert "team, ent" in problem.body["detail"]


def test_a_body_without_a_plan_says_null() -> None:
    problem = refusal(result(Reason.NO_SUBSCRIPTION, plan=""), type_base=BASE, payment_url=None)
    assert problem.body["plan"] is None


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (Reason.UNAUTHENTICATED, 401),
        (Reason.STORE_UNAVAILABLE, 503),
        (Reason.INTERNAL_ERROR, 500),
        (Reason.MISCONFIGURED, 500),
    ],
)
def test_failures_are_valid_problems_with_their_status(reason: Reason, status: int) -> None:
    problem = failure(reason, "what happened", type_base=BASE)
    assert problem.status == status
    validate_problem(problem.body)


def test_allowed_requests_tell_the_client_its_figures() -> None:
    headers = client_headers(result(None, cost=2, balance=40, allowance_remaining=7))
    assert headers == {
        "X-Credit-Cost": "2",
        "X-Credit-Balance": "40",
        "X-Credit-Allowance-Remaining": "7",
        "X-Credit-Period-End": "2026-01-01T01:00:00Z",
    }


def test_unmetered_requests_send_an_empty_plan_upstream_never_the_clients() -> None:
    assert upstream_headers("acme", None) == {
        "X-Credit-Account": "acme",
        "X-Credit-Plan": "",
        "X-Credit-Charge-Id": "",
    }
