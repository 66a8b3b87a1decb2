"""Every reason's detail text, generated from the Reason enum: a reason added without a detail, or a
detail with an unformatted placeholder (a string missing its f-prefix), fails here."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.decision import STATUS, Reason, refusal
from creditgate.core.model import Plan
from creditgate.core.policy import RequestFacts
from creditgate.core.pricing import MAX_PATH_LENGTH
from creditgate.kong.gate import Gate
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.core.test_decision import BASE, result

ROOT = Path(__file__).resolve().parents[2]
PAYMENT_REASONS = [reason for reason in Reason if reason not in STATUS]
FALLBACK = "The request was refused."
ACME: dict[str, Any] = {"id": "acme", "username": "acme", "custom_id": None, "tags": None}


def assert_formatted(detail: str) -> None:
    assert detail and detail.strip() == detail
    assert "{" not in detail and "}" not in detail, f"an unformatted placeholder: {detail!r}"


def detail_of(reason: Reason) -> str:
    charge = result(reason, cost=3, balance=1, member_used=9, member_cap=10, expires_at=1)
    problem = refusal(charge, type_base=BASE, payment_url=None, entitled=["team"])
    detail = problem.body["detail"]
    assert isinstance(detail, str)
    return detail


@pytest.mark.parametrize("reason", PAYMENT_REASONS, ids=lambda r: r.value)
def test_every_payment_refusal_has_its_own_formatted_detail(reason: Reason) -> None:
    detail = detail_of(reason)
    assert_formatted(detail)
    assert detail != FALLBACK, f"{reason.value} has no detail of its own"


def test_no_two_payment_refusals_share_a_detail() -> None:
    details = [detail_of(reason) for reason in PAYMENT_REASONS]
    assert len(set(details)) == len(details)


def test_a_refusal_that_depends_on_the_cost_states_it() -> None:
    for reason in (Reason.MEMBER_CAP_REACHED, Reason.INSUFFICIENT_CREDIT):
        assert re.search(r"\bcosts 3\b", detail_of(reason)), reason.value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gate_failure_detail(reason: Reason, settings: RedisSettings) -> str:
    """The detail the gate itself answers with, for the reasons that are not about payment."""
    redis = {"host": "127.0.0.1", "port": closed_port(), "connect_timeout": 50, "read_timeout": 50}
    if reason is Reason.ACCOUNT_DATA_INVALID:  # a real Redis whose account holds a field that does not parse
        redis = {"host": settings.host, "port": settings.port, "connect_timeout": 1000, "read_timeout": 1000}
        admin = Admin(RedisStore.from_settings(settings))
        admin.apply_plan(Plan("pro", prepaid=True))
        admin.subscribe(ACME["id"], "pro", starts_at=admin.now() - 60)
        admin.store.client.hset(admin.store.keys.account(ACME["id"]).state, "balance", "1e3")
        admin.close()
    config = {"redis": redis, "breaker_failures": 0}
    if reason is Reason.MISCONFIGURED:
        config["account_by"] = "no-such-identity"
    path = ""
    if reason is Reason.PATH_TOO_LONG:
        config["costs"] = [{"path": "/v1/**", "cost": 2}]
        path = "/v1/" + "a" * MAX_PATH_LENGTH
    gate = Gate(config)
    identity = None if reason is Reason.UNAUTHENTICATED else ACME
    facts: RequestFacts | Exception = RequestFacts(identity, path=path)
    if reason is Reason.INTERNAL_ERROR:
        facts = RuntimeError("a bug")
    action = gate._decide(facts)
    body = action.problem.body  # type: ignore[union-attr]
    assert body["reason"] == reason.value
    detail = body["detail"]
    assert isinstance(detail, str)
    return detail


@pytest.mark.parametrize(
    "reason", [r for r in STATUS if r is not Reason.GATE_UNAVAILABLE], ids=lambda r: r.value
)
def test_every_failure_the_gate_answers_has_a_formatted_detail(
    reason: Reason, settings: RedisSettings
) -> None:
    assert_formatted(gate_failure_detail(reason, settings))


def test_the_gate_unavailable_detail_of_kong_yml_is_formatted() -> None:
    # Kong's request-termination answers it when the plugin could not run (kong.yml).
    text = (ROOT / "kong.yml").read_text()
    match = re.search(r'"detail":"([^"]*)","reason":"gate_unavailable"', " ".join(text.split()))
    assert match, "kong.yml no longer answers gate_unavailable"
    assert_formatted(match.group(1))
