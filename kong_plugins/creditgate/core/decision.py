"""What the gate decided for one request, and how that is told to the client.

``ChargeResult`` is the decoded answer of the charge script. ``refusal`` turns a refused or failed
request into an RFC 9457 problem (status, ``application/problem+json`` body, headers);
``allowed_headers`` gives the figures an allowed request carries. The body's shape is
``schemas/problem.schema.json``.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

PAYMENT_REQUIRED = 402


class Reason(str, enum.Enum):
    """Why a request was not proxied: the ``reason`` code of the problem body (the value, stable),
    the HTTP status answered with it and the problem's title, declared together, once.

    ``schemas/problem.schema.json`` lists the codes and statuses generated from here
    (``python -m creditgate.core.problem_schema``); a test fails when a reason is missing from it, from
    the README's table or from the details ``refusal`` and the gate write.
    """

    _value_: str
    status: int
    heading: str  # the problem's title (``title`` is str's own method)

    if not TYPE_CHECKING:  # builds each member from its triple; ``Reason(code)`` still looks one up

        def __new__(cls, code: str, status: int, heading: str) -> Reason:
            member = str.__new__(cls, code)
            member._value_ = code
            member.status = status
            member.heading = heading
            return member

    UNAUTHENTICATED = ("unauthenticated", 401, "Authentication required")
    # A path longer than a cost rule considers (core/pricing.py's MAX_PATH_LENGTH): refused unpriced
    # rather than charged a cost no rule chose.
    PATH_TOO_LONG = ("path_too_long", 414, "Path too long")
    NO_SUBSCRIPTION = ("no_subscription", PAYMENT_REQUIRED, "No subscription")
    SUBSCRIPTION_INACTIVE = ("subscription_inactive", PAYMENT_REQUIRED, "Subscription inactive")
    SUBSCRIPTION_EXPIRED = ("subscription_expired", PAYMENT_REQUIRED, "Subscription expired")
    PLAN_NOT_ENTITLED = ("plan_not_entitled", PAYMENT_REQUIRED, "Not included in your plan")
    # A payment was refunded or disputed after its credits were spent: the account owes what the balance
    # could not give back, every request is refused until a credit (or a payment) has paid it.
    DEBT_OUTSTANDING = ("debt_outstanding", PAYMENT_REQUIRED, "Debt outstanding")
    QUOTA_EXHAUSTED = ("quota_exhausted", PAYMENT_REQUIRED, "Quota exhausted")
    INSUFFICIENT_CREDIT = ("insufficient_credit", PAYMENT_REQUIRED, "Insufficient credit")
    MEMBER_CAP_REACHED = ("member_cap_reached", PAYMENT_REQUIRED, "Member cap reached")
    STORE_UNAVAILABLE = ("store_unavailable", 503, "Billing temporarily unavailable")
    # Redis answered, but the account's data there is of the wrong type or does not parse: refused
    # whatever fault_tolerant says (bad data is not an outage), and the operator is told which key.
    ACCOUNT_DATA_INVALID = ("account_data_invalid", 500, "Account data invalid")
    MISCONFIGURED = ("misconfigured", 500, "Gateway misconfigured")
    INTERNAL_ERROR = ("internal_error", 500, "Gateway error")
    # Never sent by the plugin: Kong's request-termination answers it in a fail-closed deployment when
    # the plugin could not run (kong.yml, docs/fail-closed.md). Listed so clients see one vocabulary.
    GATE_UNAVAILABLE = ("gate_unavailable", 503, "Billing gate unavailable")


# Read per refused request: plain dicts, derived from the enum.
STATUS = {reason: reason.status for reason in Reason if reason.status != PAYMENT_REQUIRED}
TITLES = {reason: reason.heading for reason in Reason}
PAYMENT_REASONS = tuple(reason for reason in Reason if reason.status == PAYMENT_REQUIRED)

PROBLEM_JSON = "application/problem+json"


class ChargeResult(NamedTuple):
    """The charge script's answer. Credits are integers; times are Unix seconds (0 = none).

    A named tuple rather than a frozen dataclass: immutable as well, and built on every request for
    half the cost.
    """

    allowed: bool
    reason: Reason | None
    plan: str
    status: str
    cost: int
    balance: int
    allowance: int
    allowance_remaining: int
    period_end: int
    starts_at: int
    expires_at: int
    now: int
    from_allowance: int
    from_balance: int
    charge_id: str
    period_start: int = 0
    replayed: bool = False
    member_used: int = 0
    member_cap: int = -1  # -1: no cap
    debt: int = 0  # credits the account owes (a payment reversed after its credits were spent)


class Problem(NamedTuple):
    """A response that ends the request: status, JSON body and headers. A named tuple: built on every
    refused request."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]

    def encoded(self) -> str:
        """The body as JSON, by orjson: the standard library's encoder takes about 40,000 instructions
        for a refusal's body, a tenth of a refused request; orjson about 4,000. Compact, as before; a
        non-ASCII character is written as UTF-8 rather than escaped."""
        return orjson.dumps(self.body).decode()


@lru_cache(maxsize=1024)  # period ends repeat across requests: format each once
def rfc3339(epoch: int) -> str | None:
    if epoch <= 0:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def credits_text(amount: int) -> str:
    return f"{amount} credit" if amount == 1 else f"{amount} credits"


def _detail(result: ChargeResult, entitled: Sequence[str]) -> str:
    reason = result.reason
    when = rfc3339(result.period_end)
    if reason is Reason.NO_SUBSCRIPTION:
        return "This account has no subscription. Subscribe to a plan to use this API."
    if reason is Reason.SUBSCRIPTION_INACTIVE:
        if result.starts_at > result.now:
            return f"The subscription to plan '{result.plan}' starts at {rfc3339(result.starts_at)}."
        return (
            f"The subscription to plan '{result.plan}' is {result.status or 'not active'}. "
            "Settle the account or reactivate the subscription to continue."
        )
    if reason is Reason.SUBSCRIPTION_EXPIRED:
        return (
            f"The subscription to plan '{result.plan}' expired at {rfc3339(result.expires_at)}. "
            "Renew it to continue."
        )
    if reason is Reason.PLAN_NOT_ENTITLED:
        return (
            f"This API is not included in plan '{result.plan}'. "
            f"It is included in: {', '.join(entitled)}. Change plan to use it."
        )
    if reason is Reason.DEBT_OUTSTANDING:
        return (
            f"This account owes {credits_text(result.debt)}: a payment was refunded or disputed after its "
            "credits were spent. Requests are refused until the debt is paid; the next credit or payment "
            "pays it first."
        )
    if reason is Reason.QUOTA_EXHAUSTED:
        tail = f" It renews at {when}." if when else ""
        return (
            f"The allowance of plan '{result.plan}' is used up ({result.allowance} credits per period) and "
            f"the plan does not draw on prepaid credit.{tail} Upgrade the plan to continue now."
        )
    if reason is Reason.MEMBER_CAP_REACHED:
        tail = f" It renews at {when}." if when else ""
        return (
            f"This member has used {result.member_used} of the {credits_text(result.member_cap)} "
            f"its pool allows it per period, and this request costs {result.cost}.{tail} "
            "Ask the pool's owner to raise the cap."
        )
    if reason is Reason.INSUFFICIENT_CREDIT:
        return (
            f"This request costs {credits_text(result.cost)}; the account has "
            f"{credits_text(result.balance)} and {result.allowance_remaining} left in its allowance. "
            "Top up the balance to continue."
        )
    return "The request was refused."


def retry_after(result: ChargeResult) -> int | None:
    """Seconds until the refusal lifts by itself, when that time is known."""
    renews = (Reason.QUOTA_EXHAUSTED, Reason.MEMBER_CAP_REACHED)
    if result.reason in renews and result.period_end > result.now:
        return result.period_end - result.now
    if result.reason is Reason.SUBSCRIPTION_INACTIVE and result.starts_at > result.now:
        return result.starts_at - result.now
    return None


def refusal(
    result: ChargeResult,
    *,
    type_base: str,
    payment_url: str | None,
    entitled: Sequence[str] = (),
) -> Problem:
    """The 402 problem for a refused charge."""
    assert result.reason is not None
    code = result.reason._value_  # the member's own attribute: ``.value`` is a Python-level property
    body: dict[str, Any] = {
        "type": type_base + code,
        "title": result.reason.heading,
        "status": PAYMENT_REQUIRED,
        "detail": _detail(result, entitled),
        "reason": code,
        "plan": result.plan or None,
        "cost": result.cost,
        "balance": result.balance,
        "allowance_remaining": result.allowance_remaining,
        "period_end": rfc3339(result.period_end),
        "payment_url": payment_url,
    }
    if result.reason is Reason.PLAN_NOT_ENTITLED:
        body["plans"] = list(entitled)
    headers = {"Content-Type": PROBLEM_JSON}
    seconds = retry_after(result)
    if seconds is not None:
        headers["Retry-After"] = str(seconds)
    return Problem(PAYMENT_REQUIRED, body, headers)


def failure(
    reason: Reason, detail: str, *, type_base: str, retry_after_seconds: int | None = None
) -> Problem:
    """A problem that is not about payment: unauthenticated, store unavailable, gateway errors."""
    status = STATUS[reason]
    body: dict[str, Any] = {
        "type": type_base + reason.value,
        "title": TITLES[reason],
        "status": status,
        "detail": detail,
        "reason": reason.value,
    }
    headers = {"Content-Type": PROBLEM_JSON}
    if retry_after_seconds is not None:
        headers["Retry-After"] = str(retry_after_seconds)
    return Problem(status, body, headers)


COST_HEADER = "X-Credit-Cost"
BALANCE_HEADER = "X-Credit-Balance"
ALLOWANCE_HEADER = "X-Credit-Allowance-Remaining"
PERIOD_END_HEADER = "X-Credit-Period-End"
CHARGE_ID_HEADER = "X-Credit-Charge-Id"
ACCOUNT_HEADER = "X-Credit-Account"
PLAN_HEADER = "X-Credit-Plan"
MEMBER_HEADER = "X-Credit-Member"


WARNING_HEADER = "X-Credit-Warning"
SHADOW_HEADER = "X-Credit-Shadow"
REPLAYED_HEADER = "X-Credit-Replayed"
DAY_SECONDS = 86_400


@dataclass(frozen=True)
class Warnings:
    """When an allowed response warns the client that it is nearing the wall (0 turns a warning off)."""

    balance_below: int = 0
    allowance_below: int = 0
    expiry_days: int = 0

    @cached_property  # asked on every allowed request
    def enabled(self) -> bool:
        return bool(self.balance_below or self.allowance_below or self.expiry_days)

    def of(self, result: ChargeResult) -> list[str]:
        found = []
        if self.balance_below and result.balance < self.balance_below:
            found.append("low_balance")
        if (
            self.allowance_below
            and result.allowance > 0
            and result.allowance_remaining < self.allowance_below
        ):
            found.append("low_allowance")
        if (
            self.expiry_days
            and result.expires_at
            and result.expires_at - result.now <= self.expiry_days * DAY_SECONDS
        ):
            found.append("subscription_expiring")
        return found


def client_headers(result: ChargeResult) -> dict[str, str]:
    """What an allowed response tells the client about its credit."""
    headers = {
        COST_HEADER: str(0 if result.replayed else result.cost),
        BALANCE_HEADER: str(result.balance),
        ALLOWANCE_HEADER: str(result.allowance_remaining),
    }
    period_end = rfc3339(result.period_end)
    if period_end:
        headers[PERIOD_END_HEADER] = period_end
    if result.replayed:
        headers[REPLAYED_HEADER] = "true"
    return headers


def warning_headers(result: ChargeResult, warnings: Warnings) -> dict[str, str]:
    found = warnings.of(result)
    return {WARNING_HEADER: ", ".join(found)} if found else {}


def rate_limit_headers(result: ChargeResult) -> dict[str, str]:
    """The IETF ``RateLimit-Policy`` and ``RateLimit`` fields (draft-ietf-httpapi-ratelimit-headers)
    for the plan's allowance, in credits; nothing for a plan without a renewed allowance."""
    if result.allowance <= 0 or result.period_end <= 0 or not result.plan:
        return {}
    policy = '"' + result.plan + '"'  # plan names are [a-z0-9_.-]: a valid sf-string as is
    window = max(result.period_end - result.period_start, 0)
    reset = max(result.period_end - result.now, 0)
    return {
        "RateLimit-Policy": f'{policy};q={result.allowance};w={window};qu="credits"',
        "RateLimit": f"{policy};r={result.allowance_remaining};t={reset}",
    }


def shadow_headers(result: ChargeResult) -> dict[str, str]:
    """What shadow mode tells the client would have happened."""
    if result.allowed:
        return {SHADOW_HEADER: f"would_charge; cost={result.cost}"}
    assert result.reason is not None
    return {SHADOW_HEADER: f"would_refuse; reason={result.reason.value}"}


def upstream_headers(account: str, result: ChargeResult | None, member: str | None = None) -> dict[str, str]:
    """What the upstream may trust: they replace any copy the client sent.

    ``result`` is None when the request went through unmetered (store down, ``fault_tolerant`` on):
    the plan and charge id are then sent empty, never left as the client wrote them. ``member`` is
    the pool member ("" when the account pays for itself, which clears a client's copy).
    """
    headers = {
        ACCOUNT_HEADER: account,
        PLAN_HEADER: result.plan if result else "",
        CHARGE_ID_HEADER: result.charge_id if result else "",
    }
    if member is not None:
        headers[MEMBER_HEADER] = member
    return headers
