"""The balance route's answer: an account's own figures, for its own client, as JSON.

A plugin entry with ``role: balance`` answers the authenticated consumer with what its account holds
now (``schemas/balance.schema.json``), read by ``store/lua/balance.lua``; nothing is charged and
nothing is proxied. ``BalanceView`` is the decoded reply of that script, ``balance_answer`` the 200
that tells it. The warnings follow the same rules, and the same settings, as the ``X-Credit-Warning``
header of an allowed request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from creditgate.core.decision import ChargeResult, Problem, Warnings, rfc3339
from creditgate.core.model import Status

BALANCE_JSON = "application/json"
# The body is one client's account: no shared cache may keep it and hand it to another client.
BALANCE_HEADERS = {"Content-Type": BALANCE_JSON, "Cache-Control": "no-store"}


@dataclass(frozen=True)
class BalanceView:
    """An account's figures at Redis's time ``now``: credits are integers, times Unix seconds (0: none).

    The period is the one the next charge would be made in (an ended period reads as the next one, with
    nothing used). ``period_requests`` and ``period_from_balance`` are the period's requests charged
    and the credits they took from the balance (those from the allowance are ``allowance_used``).
    ``member_used``, ``member_cap`` (-1: no cap) and ``member_requests`` are the asking pool member's.
    ``debt`` is what the account owes (every request is refused while it is above 0), ``frozen`` what
    open disputes hold, ``grace_until`` until when a past_due subscription is still charged (0: none).
    """

    plan: str
    status: str
    balance: int
    allowance: int
    allowance_used: int
    period: str
    period_start: int
    period_end: int
    starts_at: int
    expires_at: int
    prepaid: bool
    now: int
    member_used: int = 0
    member_cap: int = -1
    period_requests: int = 0
    period_from_balance: int = 0
    member_requests: int = 0
    debt: int = 0
    frozen: int = 0
    grace_until: int = 0

    @property
    def allowance_remaining(self) -> int:
        return max(self.allowance - self.allowance_used, 0)

    def warnings(self, warnings: Warnings) -> list[str]:
        """The warnings an allowed request would carry now: one rule, written once (``Warnings.of``)."""
        if not warnings.enabled or not self.plan:
            return []
        figures = ChargeResult(
            allowed=True,
            reason=None,
            plan=self.plan,
            status=self.status,
            cost=0,
            balance=self.balance,
            allowance=self.allowance,
            allowance_remaining=self.allowance_remaining,
            period_end=self.period_end,
            starts_at=self.starts_at,
            expires_at=self.expires_at,
            now=self.now,
            from_allowance=0,
            from_balance=0,
            charge_id="",
            period_start=self.period_start,
        )
        return warnings.of(figures)


def balance_body(view: BalanceView, account: str, member: str, warnings: Warnings) -> dict[str, Any]:
    """The JSON body: the paying account's figures and, for a pool member, its own cap and use.

    ``usage`` is the current period's: requests charged, and their credits, from the allowance and from
    the balance (null without a subscription, as the other figures of a period).

    A pool member is told the pool's balance and allowance (what its requests are paid from, as a 402
    would tell it) and its own use, never another member's.

    ``debt`` and ``frozen`` are always told (0 for most accounts): a debt refuses every request until a
    credit pays it. ``grace_until`` only while the subscription is past_due: past it, requests are refused.
    """
    subscribed = bool(view.plan)
    body: dict[str, Any] = {
        "account": account,
        "plan": view.plan or None,
        "status": view.status or None,
        "balance": view.balance,
        "debt": view.debt,
        "frozen": view.frozen,
        "prepaid": view.prepaid if subscribed else None,
        "allowance": view.allowance if subscribed else None,
        "allowance_used": view.allowance_used if subscribed else None,
        "allowance_remaining": view.allowance_remaining if subscribed else None,
        "period": view.period if subscribed else None,
        "period_start": rfc3339(view.period_start) if subscribed else None,
        "period_end": rfc3339(view.period_end) if subscribed else None,
        "starts_at": rfc3339(view.starts_at) if subscribed else None,
        "expires_at": rfc3339(view.expires_at) if subscribed else None,
        "grace_until": rfc3339(view.grace_until) if subscribed and view.status == Status.PAST_DUE else None,
        "usage": _usage(view) if subscribed else None,
        "warnings": view.warnings(warnings),
        "member": None,
        "as_of": rfc3339(view.now),
    }
    if member:
        cap = view.member_cap if view.member_cap >= 0 else None
        body["member"] = {
            "name": member,
            "used": view.member_used,
            "requests": view.member_requests,
            "cap": cap,
            "remaining": None if cap is None else max(cap - view.member_used, 0),
        }
    return body


def _usage(view: BalanceView) -> dict[str, int]:
    return {
        "requests": view.period_requests,
        "credits": view.allowance_used + view.period_from_balance,
        "from_allowance": view.allowance_used,
        "from_balance": view.period_from_balance,
    }


def balance_answer(view: BalanceView, account: str, member: str, warnings: Warnings) -> Problem:
    """The 200 that ends the request (a ``Problem`` is the gate's shape for "end it with this")."""
    return Problem(200, balance_body(view, account, member, warnings), dict(BALANCE_HEADERS))
