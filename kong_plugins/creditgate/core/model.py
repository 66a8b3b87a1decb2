"""Plans, subscriptions and account names: plain values with their rules."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from creditgate.core.periods import Period
from creditgate.errors import InvalidDocument

# Credits are integers. Redis Lua numbers are doubles, exact up to 2**53: stay well below. The bound of
# every balance, allowance, grant and period use (store/lua/_lib.lua's MAX_CREDITS is the same).
MAX_CREDITS = 10**15
# The latest instant a subscription may name: 3000-01-01T00:00:00Z (_lib.lua's MAX_INSTANT). A time in
# milliseconds (about 1.7e12 today) is refused rather than read as a date in the year 55,000.
MAX_INSTANT = 32_503_680_000
PLAN_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


_INSTANT_RULE = f"must be a Unix time in whole seconds, at most {MAX_INSTANT} (the year 3000)"


class Status(str, enum.Enum):
    """A subscription's status, as billing systems name them."""

    ACTIVE = "active"
    TRIALING = "trialing"
    PAST_DUE = "past_due"
    SUSPENDED = "suspended"
    CANCELED = "canceled"


SHOWN = 64  # characters of a rejected value that an error message quotes


def shown(value: object) -> str:
    """A rejected value as an error message quotes it: its repr, cut to ``SHOWN`` characters, so that a
    client's 5,000-character field is never sent back whole (in a 422, a log line, a terminal)."""
    text = repr(value)
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}... ({len(text)} characters)"


def credits(value: object, where: str, *, minimum: int = 0) -> int:
    """An amount of credits, checked: an integer (never a float, never a bool) within bounds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidDocument(f"must be a whole number of credits, got {shown(value)}", where)
    if not minimum <= value <= MAX_CREDITS:
        raise InvalidDocument(f"must be between {minimum} and {MAX_CREDITS}, got {shown(value)}", where)
    return value


def check_plan_name(name: object, where: str = "name") -> str:
    if not isinstance(name, str) or not PLAN_NAME.match(name):
        raise InvalidDocument(
            "must be 1-64 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit; "
            f"got {shown(name)}",
            where,
        )
    return name


def check_account(account: object, where: str = "account") -> str:
    # No length limit: Kong's consumer username and custom_id have none, and every identity Kong can
    # give must be billable. The keys stay bounded whatever the length (store/keys.py).
    if not isinstance(account, str) or not account:
        raise InvalidDocument("must be a non-empty string", where)
    if any(ord(ch) < 32 for ch in account):
        raise InvalidDocument("must not contain control characters", where)
    return account


def account_name(namespace: str, identity: str) -> str:
    """The account an identity pays from: ``<namespace>:<identity>``, or the bare identity for "".

    Each kind of identity has its own namespace (the plugin's ``account_namespace``), so a custom_id
    and a username that are equal still name two accounts. Operators name accounts the same way.
    """
    return f"{namespace}:{identity}" if namespace else identity


@dataclass(frozen=True)
class Plan:
    """What a subscription includes: an allowance renewed every period, and whether prepaid credit may
    pay for what the allowance does not cover."""

    name: str
    period: Period = Period.MONTH
    allowance: int = 0
    prepaid: bool = True
    title: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        check_plan_name(self.name)
        if not isinstance(self.period, Period):
            raise InvalidDocument(f"must be one of {[p.value for p in Period]}", "period")
        credits(self.allowance, "allowance")
        if not isinstance(self.prepaid, bool):
            raise InvalidDocument("must be true or false", "prepaid")

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Plan:
        """A plan from its JSON document (see ``schemas/plan.schema.json``)."""
        if not isinstance(doc, Mapping):
            raise InvalidDocument("a plan must be an object")
        unknown = set(doc) - {"name", "period", "allowance", "prepaid", "title", "description"}
        if unknown:
            raise InvalidDocument(f"unknown field(s) {sorted(unknown)}")
        try:
            period = Period(doc.get("period", Period.MONTH.value))
        except ValueError:
            raise InvalidDocument(
                f"must be one of {[p.value for p in Period]}, got {doc.get('period')!r}", "period"
            ) from None
        for text in ("title", "description"):
            if not isinstance(doc.get(text, ""), str):
                raise InvalidDocument("must be a string", text)
        return cls(
            name=doc.get("name"),  # type: ignore[arg-type]  # checked in __post_init__
            period=period,
            allowance=doc.get("allowance", 0),
            prepaid=doc.get("prepaid", True),
            title=doc.get("title", ""),
            description=doc.get("description", ""),
        )

    def to_document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "period": self.period.value,
            "allowance": self.allowance,
            "prepaid": self.prepaid,
            "title": self.title,
            "description": self.description,
        }


@dataclass(frozen=True)
class Subscription:
    """An account's subscription to a plan. Times are Unix seconds, UTC; the anchor is when periods start."""

    account: str
    plan: str
    status: Status = Status.ACTIVE
    starts_at: int = 0
    anchor: int = 0
    expires_at: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        check_account(self.account)
        check_plan_name(self.plan, "plan")
        if not isinstance(self.status, Status):
            raise InvalidDocument(f"must be one of {[s.value for s in Status]}", "status")
        for name in ("starts_at", "anchor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INSTANT:
                raise InvalidDocument(_INSTANT_RULE, name)
        if self.expires_at is not None and (
            isinstance(self.expires_at, bool)
            or not isinstance(self.expires_at, int)
            or not 0 < self.expires_at <= MAX_INSTANT
        ):
            raise InvalidDocument(_INSTANT_RULE, "expires_at")
        if self.expires_at is not None and self.expires_at <= self.starts_at:
            raise InvalidDocument("must be after starts_at", "expires_at")
