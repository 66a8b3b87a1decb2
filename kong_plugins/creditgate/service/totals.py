"""Usage totals for the whole API (or some accounts): per UTC day, per route and the most charged accounts.

The same counters as ``GET /v1/usage``, added up here so that a dashboard does not download every
account's rows to draw its charts. Each figure's refusals are also given by reason (``refused_by_reason``,
the 402 body's code), adding up to ``refused``. Read-only, behind the read-only token.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from creditgate.core.inputs import format_instant
from creditgate.core.periods import DAY_SECONDS
from creditgate.ops.admin import UsageRow
from creditgate.service.routes import PARAMS, READ, Reader, Since, Until, _instant, _problems

FIGURES = ("requests", "credits", "refunded", "refused", "replayed", "shadow_allowed", "shadow_refused")

router = APIRouter(prefix="/v1")


def _add(into: dict[str, Any], row: UsageRow) -> None:
    for name in FIGURES:
        into[name] += int(getattr(row, name))
    reasons: dict[str, int] = into["refused_by_reason"]
    for reason, count in row.refused_by_reason:
        reasons[reason] = reasons.get(reason, 0) + count


def _zero() -> dict[str, Any]:
    return {**dict.fromkeys(FIGURES, 0), "refused_by_reason": {}}


def _sorted(figures: dict[str, Any]) -> dict[str, Any]:
    return {**figures, "refused_by_reason": dict(sorted(figures["refused_by_reason"].items()))}


@router.get("/usage/totals", tags=["usage"], responses={**READ, **PARAMS, **_problems(404)})
def usage_totals(
    service: Reader,
    since: Since = None,
    until: Until = None,
    top: Annotated[int, Query(ge=1, le=1000, description="How many accounts in `top_accounts`")] = 10,
    account: Annotated[
        list[str] | None, Query(description="Only these accounts (repeatable); default the whole API")
    ] = None,
) -> dict[str, Any]:
    """The whole API's usage (or only ``account``'s) on the UTC days that overlap ``[since, until)`` (at
    most 400; default the last 7): every day (zeros included), every route, and the ``top`` accounts by
    credits charged. Each has ``refused_by_reason``, refusals by the 402 body's code, adding up to
    ``refused`` (``unrecorded``: refusals counted before reasons were); ``reasons`` lists the codes seen,
    most refused first. Pool members' own rows are left out: the pool's row already counts them."""
    now = service.admin.now()
    until_s = _instant(until, "until") or now + 1
    since_s = _instant(since, "since")
    if since_s is None:
        since_s = now - now % DAY_SECONDS - 6 * DAY_SECONDS
    rows = [
        r for r in service.admin.usage(since=since_s, until=until_s, accounts=account or None) if not r.member
    ]
    first = since_s - since_s % DAY_SECONDS
    days = {(format_instant(d) or "")[:10]: _zero() for d in range(first, until_s, DAY_SECONDS)}
    routes: dict[str, dict[str, Any]] = {}
    accounts: dict[str, dict[str, Any]] = {}
    total = _zero()
    for row in rows:
        _add(days.setdefault(row.day, _zero()), row)
        _add(routes.setdefault(row.route, _zero()), row)
        _add(accounts.setdefault(row.account, _zero()), row)
        _add(total, row)
    ranked = sorted(accounts.items(), key=lambda item: (-item[1]["credits"], item[0]))
    by_reason: dict[str, int] = total["refused_by_reason"]
    return {
        "since": format_instant(first),
        "until": format_instant(until_s),
        "total": _sorted(total),
        "reasons": sorted(by_reason, key=lambda reason: (-by_reason[reason], reason)),
        "days": [{"day": day, **_sorted(figures)} for day, figures in sorted(days.items())],
        "routes": [{"route": route, **_sorted(figures)} for route, figures in sorted(routes.items())],
        "top_accounts": [{"account": name, **_sorted(figures)} for name, figures in ranked[:top]],
        "accounts_with_usage": len(accounts),
    }
