"""Usage totals for the whole API (or some accounts): per UTC day, per route and the most charged accounts.

The same counters as ``GET /v1/usage``, added up so that a dashboard does not download every account's
rows to draw its charts. Each figure's refusals are also given by reason (``refused_by_reason``, the
402 body's code), adding up to ``refused``. Read-only, behind the read-only token.

The whole API's figures come from the day's totals the charge and settle scripts keep beside each
account's counters (store/totals.py): a request reads a few keys per day, whatever the number of
accounts; only the ``top`` accounts' own counters are read.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query

from creditgate.core.inputs import format_instant
from creditgate.core.periods import DAY_SECONDS
from creditgate.errors import InvalidDocument
from creditgate.ops.admin import UsageRow
from creditgate.ops.usage import days_overlapping, usage_rows
from creditgate.service.events import _number
from creditgate.service.routes import PARAMS, READ, Reader, Since, Until, _instant, _problems
from creditgate.store.reports import account_page
from creditgate.store.totals import Totals

FIGURES = ("requests", "credits", "refunded", "refused", "replayed", "shadow_allowed", "shadow_refused")

router = APIRouter(prefix="/v1")
log = logging.getLogger(__name__)

BUILD_ENV = "CREDIT_GATE_TOTALS_BUILD_SECONDS"


class TotalsBuilder:
    """Every ``every`` seconds (the first time too: a service started for a moment does nothing),
    builds the days over that reads would otherwise fold (Cluster) or rebuild (days before the totals)
    on the way (``Totals.build_closed``), so that a read of 400 days finds them built."""

    def __init__(self, service: Any, every: float) -> None:
        self.service, self.every = service, every
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="credit-gate-totals", daemon=True)

    @classmethod
    def from_env(cls, service: Any, environ: Mapping[str, str] | None) -> TotalsBuilder | None:
        every = _number(os.environ if environ is None else environ, BUILD_ENV, 600.0, 0, 86_400)
        return cls(service, every) if every > 0 else None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                admin = self.service.admin
                built = Totals(admin.store).build_closed(admin.now())
                if built:
                    log.info("credit-gate: built the usage totals of %d days", built)
            except Exception:
                log.warning("credit-gate: building the usage totals failed", exc_info=True)


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


@router.get("/usage", tags=["usage"], responses={**READ, **PARAMS, **_problems(404)})
def usage(
    service: Reader,
    since: Since = None,
    until: Until = None,
    account: Annotated[
        list[str] | None, Query(description="Only these accounts (repeatable, at most 100)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Accounts a page, without `account`")] = 50,
    after: Annotated[str | None, Query(description="The `next` of the page before")] = None,
) -> dict[str, Any]:
    """Requests, credits and refusals per account, route and UTC day (at most 400 days; default the last
    7), from the charge script's counters. Without ``account``, a page of ``limit`` accounts (in Redis's
    order, each page's rows sorted) and ``next``, the cursor of the next page (null after the last):
    ``/v1/usage/totals`` gives the whole API's figures in one read."""
    now = service.admin.now()
    until_s = _instant(until, "until") or now + 1
    since_s = _instant(since, "since")
    if since_s is None:
        since_s = now - now % DAY_SECONDS - 6 * DAY_SECONDS
    if account:
        if len(account) > 100:
            raise InvalidDocument(f"names {len(account)} accounts; at most 100", "account")
        rows = service.admin.usage(since=since_s, until=until_s, accounts=account)
        return {"rows": [r.to_json() for r in rows], "next": None}
    days = days_overlapping(since_s, until_s)
    start = after or "0"
    if not start.isdigit() or len(start) > 20:
        raise InvalidDocument("is not a cursor this API gave", "after")
    cursor, names = account_page(service.admin.store, int(start), limit)
    rows = service.admin.usage_of_days([(name, day) for name in names for day in days])
    return {"rows": [r.to_json() for r in rows], "next": str(cursor) if cursor else None}


MAX_ACCOUNTS = 100  # `account` filters and `top` at most: each is read day by day


def _add_rows(into: dict[str, dict[str, Any]], key: str, rows: list[UsageRow]) -> None:
    for row in rows:
        _add(into.setdefault(getattr(row, key), _zero()), row)


@router.get("/usage/totals", tags=["usage"], responses={**READ, **PARAMS, **_problems(404)})
def usage_totals(
    service: Reader,
    since: Since = None,
    until: Until = None,
    top: Annotated[int, Query(ge=1, le=MAX_ACCOUNTS, description="How many accounts in `top_accounts`")] = 10,
    account: Annotated[
        list[str] | None,
        Query(description=f"Only these accounts (repeatable, at most {MAX_ACCOUNTS}); default the whole API"),
    ] = None,
) -> dict[str, Any]:
    """The whole API's usage (or only ``account``'s) on the UTC days that overlap ``[since, until)`` (at
    most 400; default the last 7): every day (zeros included), every route, and the ``top`` accounts by
    credits charged (then, when fewer were charged, accounts counted with nothing charged, by name;
    ties at the last place may fall either way). Each has ``refused_by_reason``, refusals by the 402
    body's code, adding up to ``refused`` (``unrecorded``: refusals counted before reasons were);
    ``reasons`` lists the codes seen, most refused first. Pool members' own rows are left out: the
    pool's row already counts them.
    ``accounts_with_usage``: accounts counted on any of the days (exact for one day, else an estimate
    within about 1%); ``top_accounts_exact`` is false only when a day held more accounts near the top
    than the ranking reads (20,000)."""
    admin = service.admin
    now = admin.now()
    until_s = _instant(until, "until") or now + 1
    since_s = _instant(since, "since")
    if since_s is None:
        since_s = now - now % DAY_SECONDS - 6 * DAY_SECONDS
    starts = days_overlapping(since_s, until_s)
    if account and len(account) > MAX_ACCOUNTS:
        raise InvalidDocument(f"names {len(account)} accounts; at most {MAX_ACCOUNTS}", "account")
    days = {(format_instant(d) or "")[:10]: _zero() for d in starts}
    routes: dict[str, dict[str, Any]] = {}
    accounts: dict[str, dict[str, Any]] = {}
    total = _zero()
    exact = True
    if account:
        rows = [r for r in admin.usage(since=since_s, until=until_s, accounts=account) if not r.member]
        _add_rows(accounts, "account", rows)
        ranked = sorted(accounts.items(), key=lambda item: (-item[1]["credits"], item[0]))[:top]
        with_usage = len(accounts)
    else:
        totals = Totals(admin.store)
        held = totals.days(starts, now)
        rows = []
        for day, counters in zip(held, totals.counters(held), strict=True):
            rows += usage_rows(format_instant(day.start) or "", "", counters)
        best = totals.top(held, top)
        exact = best.exact
        names = [name for name, _ in best.accounts]
        counted = totals.counted_on(held, names)  # only the days each was counted on are read
        rows_of = admin.usage_of_days([(name, day) for name in names for day in counted[name]])
        _add_rows(accounts, "account", [r for r in rows_of if not r.member])
        ranked = [(name, accounts.get(name, _zero())) for name in names]
        with_usage = totals.accounts_counted(held)
    for row in rows:
        _add(days.setdefault(row.day, _zero()), row)
        _add(routes.setdefault(row.route, _zero()), row)
        _add(total, row)
    by_reason: dict[str, int] = total["refused_by_reason"]
    first = starts[0]
    return {
        "since": format_instant(first),
        "until": format_instant(until_s),
        "total": _sorted(total),
        "reasons": sorted(by_reason, key=lambda reason: (-by_reason[reason], reason)),
        "days": [{"day": day, **_sorted(figures)} for day, figures in sorted(days.items())],
        "routes": [{"route": route, **_sorted(figures)} for route, figures in sorted(routes.items())],
        "top_accounts": [{"account": name, **_sorted(figures)} for name, figures in ranked],
        "top_accounts_exact": exact,
        "accounts_with_usage": with_usage,
    }
