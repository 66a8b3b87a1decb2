"""Usage reports: the charge and settle scripts' daily counters, read back as rows per account, route
and UTC day (``Admin.usage``), and the sums the reports draw from them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from creditgate.core.periods import DAY_SECONDS
from creditgate.errors import InvalidDocument
from creditgate.store.replies import USAGE_TTL_SECONDS

MAX_USAGE_DAYS = USAGE_TTL_SECONDS // DAY_SECONDS
# The charge and settle scripts' counters (see charge.lua, settle.lua): "<route>[|member:<m>]|<field>".
USAGE_FIELDS = (
    "requests",
    "credits",
    "refused",
    "refunded",
    "settled_back",
    "replayed",
    "shadow_allowed",
    "shadow_refused",
)
# Each refusal is also counted by its reason, "<route>|refused:<reason>" (refusal_events in _lib.lua).
REFUSED_BY = "refused:"
# Refusals counted before reasons were (or under a counter that would not parse): the rest of `refused`.
UNRECORDED_REASON = "unrecorded"


@dataclass(frozen=True)
class UsageRow:
    """One account's use of one route on one UTC day (``day`` is YYYY-MM-DD)."""

    day: str
    account: str
    route: str
    requests: int
    credits: int
    refused: int
    member: str = ""  # a pool member's own row; "" for the account as a whole
    refunded: int = 0  # credits given back: refunds of failed calls and settlements below the hold
    replayed: int = 0  # retries answered by an earlier charge (Idempotency-Key)
    shadow_allowed: int = 0  # shadow mode: would have been charged
    shadow_refused: int = 0  # shadow mode: would have been refused
    # (reason, count) by reason, adding up to `refused`; empty on a member's row (counted for the pool)
    refused_by_reason: tuple[tuple[str, int], ...] = ()

    @property
    def net_credits(self) -> int:
        return self.credits - self.refunded

    def to_json(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "account": self.account,
            "route": self.route,
            "member": self.member or None,
            "requests": self.requests,
            "credits": self.credits,
            "refunded": self.refunded,
            "refused": self.refused,
            "replayed": self.replayed,
            "shadow_allowed": self.shadow_allowed,
            "shadow_refused": self.shadow_refused,
        }


def credits_per_day(rows: Iterable[UsageRow]) -> dict[str, int]:
    """Credits spent per UTC day, net of refunds, counting each charge once: a pool member's row
    repeats part of its pool's, so members' rows are left out."""
    per_day: dict[str, int] = {}
    for row in rows:
        if not row.member:
            per_day[row.day] = per_day.get(row.day, 0) + row.net_credits
    return per_day


def days_overlapping(since: int, until: int) -> list[int]:
    """The start of each UTC day that overlaps ``[since, until)``; refused past what Redis keeps."""
    if until <= since:
        raise InvalidDocument("must be after since", "until")
    days = list(range(since - since % DAY_SECONDS, until, DAY_SECONDS))
    if len(days) > MAX_USAGE_DAYS:
        raise InvalidDocument(
            f"covers {len(days)} days; usage is kept for {MAX_USAGE_DAYS} days, ask for fewer", "since"
        )
    return days


def usage_rows(day: str, account: str, counters: dict[str, int]) -> list[UsageRow]:
    """One account's rows of one day, from its counters; counters of no known field are left out."""
    by_route: dict[tuple[str, str], dict[str, int]] = {}
    reasons: dict[tuple[str, str], dict[str, int]] = {}
    for name, value in counters.items():
        where, _, field = name.rpartition("|")
        route, _, member = where.partition("|member:")
        if field.startswith(REFUSED_BY) and field != REFUSED_BY:
            reasons.setdefault((route, member), {})[field.removeprefix(REFUSED_BY)] = value
            by_route.setdefault((route, member), {})
        elif field in USAGE_FIELDS:
            by_route.setdefault((route, member), {})[field] = value
    rows = []
    for (route, member), c in sorted(by_route.items()):
        refused, by_reason = c.get("refused", 0), reasons.get((route, member), {})
        if not member:  # the reasons add up to `refused`, whatever the counters say
            rest = refused - sum(by_reason.values())
            if rest > 0:
                by_reason = {**by_reason, UNRECORDED_REASON: by_reason.get(UNRECORDED_REASON, 0) + rest}
            refused = max(refused, sum(by_reason.values()))
        rows.append(
            UsageRow(
                day[:10],
                account,
                route,
                c.get("requests", 0),
                c.get("credits", 0),
                refused,
                member=member,
                refunded=c.get("refunded", 0) + c.get("settled_back", 0),
                replayed=c.get("replayed", 0),
                shadow_allowed=c.get("shadow_allowed", 0),
                shadow_refused=c.get("shadow_refused", 0),
                refused_by_reason=tuple(sorted(by_reason.items())) if not member else (),
            )
        )
    return rows


__all__ = ["MAX_USAGE_DAYS", "USAGE_FIELDS", "UsageRow", "credits_per_day", "days_overlapping", "usage_rows"]
