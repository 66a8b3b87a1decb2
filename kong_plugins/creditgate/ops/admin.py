"""The operators' Python API: plans, subscriptions, credits, the ledger and usage.

This is what a billing integration imports, and what the ``credit-gate`` CLI is a thin layer over.
Every method validates its input before touching Redis and raises a ``CreditGateError`` subclass with
a message an operator can act on. Times are Unix seconds; credits are integers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from creditgate.core.alerts import Alerts
from creditgate.core.config import KEY_PREFIX, RedisSettings
from creditgate.core.inputs import format_instant
from creditgate.core.model import (
    MAX_CREDITS,
    Plan,
    Status,
    Subscription,
    check_account,
    check_plan_name,
    credits,
)
from creditgate.core.periods import Period, window_at
from creditgate.core.schema import default
from creditgate.errors import (
    BalanceCapReached,
    ConfigError,
    Conflict,
    InsufficientBalance,
    InvalidDocument,
    NotFound,
    StoreEmpty,
)
from creditgate.ops.usage import USAGE_FIELDS, UsageRow, credits_per_day, days_overlapping, usage_rows
from creditgate.store import events
from creditgate.store.ledger_check import replay_ledger
from creditgate.store.replies import AccountState, CreditResult, ImportOutcome, LedgerEntry
from creditgate.store.reports import usage_of
from creditgate.store.store import RedisStore

# The namespace of the idempotency keys operators send (the HTTP API's Idempotency-Key, the CLI's --key,
# Admin's callers by default): recorded as "api:<key>", so that no key an operator picks can stand for a
# webhook's or a payment's, nor theirs for an operator's. The webhooks record their own prefixed keys
# ("webhook:<event id>", "stripe:...") as given: PAYMENT_KEYS.
OPERATOR_KEYS = "api"
PAYMENT_KEYS = ""


@dataclass(frozen=True)
class AccountView(AccountState):
    """An account as a charge made now would see it: the stored state, with the current period worked
    out here (``period``, ``used``, ``period_start`` and ``period_end`` are its), because the charge
    script rolls a period over only on the first request after it ends. ``period`` is "none" also for
    a length the state holds that does not parse. ``debt`` (every request refused while above 0),
    ``frozen`` and ``grace_until`` are the payments' fields, as stored."""

    @property
    def remaining(self) -> int:
        return max(self.allowance - self.used, 0)

    @property
    def subscribed(self) -> bool:
        return bool(self.plan)

    @property
    def graced(self) -> bool:
        """Past due but still charged: the grace a failed renewal leaves runs until ``grace_until``."""
        return self.status == Status.PAST_DUE and self.grace_until > 0

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "balance": self.balance,
            "debt": self.debt,
            "frozen": self.frozen,
            "grace_until": format_instant(self.grace_until) if self.graced else None,
            "subscription": {
                "plan": self.plan,
                "status": self.status,
                "starts_at": format_instant(self.starts_at),
                "anchor": format_instant(self.anchor),
                "expires_at": format_instant(self.expires_at),
            }
            if self.subscribed
            else None,
            "period": {
                "length": self.period,
                "start": format_instant(self.period_start),
                "end": format_instant(self.period_end),
                "allowance": self.allowance,
                "used": self.used,
                "remaining": self.remaining,
                "prepaid": self.prepaid,
            }
            if self.subscribed
            else None,
        }


def account_view(state: AccountState, now: int) -> AccountView:
    used, start, end = state.used, state.period_start, state.period_end
    try:
        period = Period(state.period)
    except ValueError:
        period = Period.NONE
    if state.plan and period is not Period.NONE and (end == 0 or now >= end or now < start):
        window = window_at(period, state.anchor, now)
        used, start, end = 0, window.start, window.end
    elif period is Period.NONE:
        start, end = state.anchor, 0
    current = {"period": period.value, "used": used, "period_start": start, "period_end": end}
    return AccountView(**{**vars(state), **current})


@dataclass(frozen=True)
class LedgerCheck:
    """Whether replaying an account's ledger gives its balance: ``ledger_base`` (what retention folded
    away) plus the amount of each of the ``entries`` after it, against the balance as of ``through``
    (the newest entry when the check began, "" for an empty ledger; see ``store/ledger_check.py``)."""

    account: str
    balance: int
    ledger_base: int
    entries: int
    replayed: int
    through: str = ""

    @property
    def ok(self) -> bool:
        return self.replayed == self.balance


def stream_bound(epoch: int | None, *, end: bool) -> str:
    """The stream id bound for "recorded at or after ``epoch``" (start) or "before ``epoch``" (end).

    Stream ids are the milliseconds at which Redis appended the entry, so ranges are exact and an
    export resumed from the previous ``until`` neither skips nor repeats an entry.
    """
    if epoch is None:
        return "+" if end else "-"
    return str(epoch * 1000 - 1) if end else str(epoch * 1000)


LIST_ACCOUNTS = "`credit-gate accounts` lists the accounts"  # the CLI's hint (errors.py)


class Admin:
    """Operations on one credit-gate store."""

    def __init__(
        self,
        store: RedisStore,
        *,
        ledger_retention: int = default("ledger_retention"),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ledger_retention = ledger_retention
        self.clock = clock
        self._marked = False

    def _mark(self) -> None:
        """Before an operator's first write: the store marker, by which the gate tells a Redis that lost
        its data ("store_empty", answered as an outage) from an account that never subscribed."""
        if not self._marked:
            self.store.mark_store()
            self._marked = True

    @classmethod
    def connect(
        cls,
        settings: RedisSettings,
        prefix: str = default("key_prefix"),
        *,
        ledger_retention: int = default("ledger_retention"),
        clock: Callable[[], float] = time.time,
    ) -> Admin:
        """An Admin on a new client; ``prefix`` and ``ledger_retention`` must match the plugin's config."""
        if not KEY_PREFIX.match(prefix):
            raise ConfigError(
                f"key prefix must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', ':', '-', got {prefix!r}"
            )
        return cls(RedisStore.from_settings(settings, prefix), ledger_retention=ledger_retention, clock=clock)

    def close(self) -> None:
        self.store.close()

    def now(self) -> int:
        return int(self.clock())

    # Plans

    def apply_plan(self, plan: Plan) -> list[str]:
        """Create or replace a plan; its new terms reach every subscribed account at once.

        Returns the accounts whose terms were updated.
        """
        self._mark()
        self.store.put_plan(plan)
        return [a for a in self.store.plan_accounts(plan.name) if self.store.sync_plan_terms(plan, a)]

    def plan(self, name: str) -> Plan:
        check_plan_name(name, "plan")
        plan = self.store.get_plan(name)
        if plan is None:
            raise NotFound(f"no plan named '{name}'").hinted("`credit-gate plans list` shows the plans")
        return plan

    def plans(self) -> list[Plan]:
        return [p for p in (self.store.get_plan(n) for n in self.store.plan_names()) if p is not None]

    def plan_subscribers(self, name: str) -> list[str]:
        """Accounts currently subscribed to the plan (the index set, checked against each account)."""
        accounts = self.store.plan_accounts(name)
        return [s.account for s in self.store.account_states(accounts) if s.plan == name]

    def delete_plan(self, name: str, *, force: bool = False) -> None:
        """Delete a plan; refused while accounts are subscribed to it, unless forced.

        A forced deletion leaves those accounts on the plan's last terms (they are copied into each
        account), so they go on being charged as before; apply the plan again to change them.
        """
        self.plan(name)
        subscribed = self.plan_subscribers(name)
        if subscribed and not force:
            raise Conflict(
                f"plan '{name}' is used by {len(subscribed)} account(s) (e.g. {subscribed[0]}); "
                "move them to another plan first, or force the deletion"
            )
        self.store.delete_plan(name)

    # Accounts and subscriptions

    def subscribe(
        self,
        account: str,
        plan_name: str,
        *,
        status: Status = Status.ACTIVE,
        starts_at: int | None = None,
        anchor: int | None = None,
        expires_at: int | None = None,
    ) -> Subscription:
        """Subscribe an account to a plan, or move it to another plan (its balance is kept)."""
        self._mark()
        plan = self.plan(plan_name)
        start = self.now() if starts_at is None else starts_at
        subscription = Subscription(
            account=account,
            plan=plan.name,
            status=status,
            starts_at=start,
            anchor=start if anchor is None else anchor,
            expires_at=expires_at,
        )
        self.store.subscribe(subscription, plan)
        self._catch_up_terms(account, plan)
        return subscription

    def _catch_up_terms(self, account: str, written: Plan) -> None:
        """After terms read from a plan were copied into an account: copy the plan's current terms.

        ``apply_plan`` writes the plan, then updates the accounts of its index set; a subscription
        reads the plan, then writes the account and adds it to the set. When the two race, the plan
        may change after it was read and before the account is in the set, and nothing would bring
        the new terms. Reading the plan again after the write closes that gap: either this read sees
        the new plan, or apply_plan's later read of the set sees the account. (The plan and the
        account live on different Cluster slots, so no one script can do both.)
        """
        current = self.store.get_plan(written.name)
        if current is not None and current != written:
            self.store.sync_plan_terms(current, account)

    def change_plan(self, account: str, plan_name: str) -> str:
        """Move a subscribed account to another plan, keeping its status, start, anchor, expiry and
        balance; returns the previous plan."""
        check_account(account)
        plan = self.plan(plan_name)
        previous = self.store.change_plan(account, plan)
        if not previous:
            raise NotFound(f"account '{account}' has no subscription; subscribe it to a plan first")
        self._catch_up_terms(account, plan)
        return previous

    def set_status(self, account: str, status: Status) -> str:
        check_account(account)
        previous = self.store.set_status(account, status)
        if not previous:
            raise NotFound(f"account '{account}' has no subscription; subscribe it to a plan first")
        return previous

    def account(self, account: str) -> AccountState:
        check_account(account)
        state = self.store.account_state(account)
        if not state.exists:
            raise NotFound(f"no account named '{account}'").hinted(LIST_ACCOUNTS)
        return state

    def view(self, account: str) -> AccountView:
        """Balance, the current period's allowance (used, left, end) and the subscription."""
        return account_view(self.account(account), self.now())

    def accounts(self, batch: int = 500) -> list[AccountView]:
        names = self.store.account_names()
        now = self.now()
        views: list[AccountView] = []
        for i in range(0, len(names), batch):
            views += [
                account_view(s, now) for s in self.store.account_states(names[i : i + batch]) if s.exists
            ]
        return views

    # Pools

    def set_member_cap(self, pool: str, member: str, cap: int | None) -> None:
        """Cap what a member of a pool may draw per period of the pool's plan; None lifts the cap.

        Membership itself comes from the consumer's tags in Kong (the plugin's ``pool_tag_prefix``);
        the pool is an ordinary account with its own subscription and balance.
        """
        check_account(pool, "pool")
        check_account(member, "member")
        if cap is not None:
            credits(cap, "cap")
        if not self.store.account_state(pool).exists:  # a cap on nothing would wait for a pool by that name
            raise NotFound(f"no account named '{pool}': a pool is an account, subscribe it to a plan first")
        self.store.set_member_cap(pool, member, cap)

    def member_caps(self, pool: str) -> dict[str, int]:
        check_account(pool, "pool")
        return self.store.member_caps(pool)

    # Credits

    def grant(
        self,
        account: str,
        amount: int,
        *,
        note: str = "",
        idempotency_key: str = "",
        key_namespace: str = OPERATOR_KEYS,
        create: bool = True,
    ) -> CreditResult:
        """Top up a balance. The same idempotency key counts once, however often it is retried, also
        when the retries race; sent for another amount it raises IdempotencyKeyReused (nothing changes).
        ``key_namespace`` keeps a caller's keys apart (OPERATOR_KEYS, the default, for what operators
        send; PAYMENT_KEYS records the key as given, as the webhooks' prefixed keys are).
        ``create=False`` refuses an account that does not exist yet (a typo)."""
        check_account(account)
        credits(amount, "amount", minimum=1)
        if not create:
            self.account(account)
        self._mark()
        try:
            result = self.store.credit(
                account,
                "grant",
                amount,
                now=self.now(),
                note=note,
                idempotency_key=idempotency_key,
                key_namespace=key_namespace,
                ledger_retention=self.ledger_retention,
            )
        except BalanceCapReached as error:
            raise _cap_conflict(account, error.balance, amount) from None
        self.store.add_account(account)
        return result

    def adjust_down(
        self,
        account: str,
        amount: int,
        *,
        note: str = "",
        idempotency_key: str = "",
        key_namespace: str = OPERATOR_KEYS,
    ) -> CreditResult:
        """Take credits away; refused, with nothing changed, if the balance would go below zero. The key
        and its namespace as for ``grant``."""
        check_account(account)
        credits(amount, "amount", minimum=1)
        self.account(account)
        try:
            return self.store.credit(
                account,
                "adjust",
                -amount,
                now=self.now(),
                note=note,
                idempotency_key=idempotency_key,
                key_namespace=key_namespace,
                ledger_retention=self.ledger_retention,
            )
        except InsufficientBalance as error:
            raise Conflict(
                f"account '{account}' has {error.balance} credits; cannot take away {amount} "
                "(the balance never goes below zero)"
            ) from None

    # The ledger

    def ledger(
        self, account: str, *, since: int | None = None, until: int | None = None, limit: int = 50
    ) -> list[LedgerEntry]:
        """The newest ``limit`` entries recorded in ``[since, until)``, oldest first."""
        self.account(account)
        if limit < 1:
            raise InvalidDocument("must be at least 1", "limit")
        return self.store.ledger_tail(
            account, limit, stream_bound(since, end=False), stream_bound(until, end=True)
        )

    def ledger_entries(
        self,
        *,
        since: int | None = None,
        until: int | None = None,
        accounts: Sequence[str] | None = None,
    ) -> Iterator[LedgerEntry]:
        """Every entry recorded in ``[since, until)``, account by account, each account's oldest first.

        Read in batches, so an export of any size runs in constant memory.
        """
        if since is not None and until is not None and until <= since:
            raise InvalidDocument("must be after since", "until")
        names = list(accounts) if accounts else self.store.account_names()
        for account in names:
            check_account(account)
            yield from self.store.ledger(
                account, stream_bound(since, end=False), stream_bound(until, end=True)
            )

    def store_marked(self) -> bool:
        """Whether Redis holds this store's marker: an emptied Redis, or another database, has none."""
        return self.store.store_marked()

    def verify_ledger(self, account: str) -> LedgerCheck:
        """Replay an account's ledger against its balance as of its newest entry when the check began.

        Read in batches of 1000 entries, none of which holds Redis for more than about a millisecond,
        whatever the retention; charges and the retention's fold go on meanwhile, and the check stays
        exact (the rule: ``store/ledger_check.py``).
        """
        check_account(account)
        replay = replay_ledger(self.store, account)
        if not replay.exists and not self.store.store_marked():
            raise StoreEmpty(
                "Redis holds no credit-gate data (no store marker): it was emptied or is not the "
                "configured database"
            )
        if not replay.exists:
            raise NotFound(f"no account named '{account}'").hinted(LIST_ACCOUNTS)
        return LedgerCheck(
            account, replay.balance, replay.ledger_base, replay.entries, replay.replayed, replay.through
        )

    # Usage

    def usage(self, *, since: int, until: int, accounts: Iterable[str] | None = None) -> list[UsageRow]:
        """Requests, credits and refusals per account, route and UTC day, for the days that overlap
        ``[since, until)``, from the counters the charge script keeps (the ledger is never scanned)."""
        days = days_overlapping(since, until)
        if accounts is None:
            names = self.store.account_names()
        else:
            names = [check_account(a) for a in accounts]
            for name in names:
                self.account(name)
        rows: list[UsageRow] = []
        for account in names:
            for day, counters in zip(days, usage_of(self.store, [(account, d) for d in days]), strict=True):
                rows += usage_rows(format_instant(day) or "", account, counters)
        rows.sort(key=lambda r: (r.day, r.account, r.route))
        return rows

    def usage_of_days(self, pairs: Sequence[tuple[str, int]]) -> list[UsageRow]:
        """The rows of known accounts on given days (account, start of a UTC day), in a few pipelines."""
        rows: list[UsageRow] = []
        for (account, day), counters in zip(pairs, usage_of(self.store, pairs), strict=True):
            rows += usage_rows(format_instant(day) or "", account, counters)
        rows.sort(key=lambda r: (r.day, r.account, r.route))
        return rows

    # Bulk import

    def import_account(
        self,
        account: str,
        *,
        plan: str | None = None,
        status: Status | None = None,
        starts_at: int | None = None,
        anchor: int | None = None,
        expires_at: int | None = None,
        balance: int = 0,
        idempotency_key: str | None = None,
        note: str = "import",
    ) -> ImportOutcome:
        """Create or update one account from an import: its subscription and an opening balance.

        Idempotent: what is not given keeps its current value (or the default for a new account), and the
        balance is granted once per idempotency key (default ``import:<account>``: an account's opening
        balance is imported once, however often the file is run). Applied in one script: all or nothing.
        """
        check_account(account)
        credits(balance, "balance")
        self._mark()
        if plan is None:
            if status is not None or starts_at is not None or anchor is not None or expires_at is not None:
                raise InvalidDocument("is needed to set status, starts_at, anchor or expires_at", "plan")
            subscription = None
        else:
            chosen = self.plan(plan)
            current = self.store.account_state(account)
            had = bool(current.plan)
            start = starts_at if starts_at is not None else current.starts_at if had else self.now()
            if anchor is None:
                anchor = current.anchor if had and starts_at is None else start
            if expires_at is None and had and current.expires_at:
                expires_at = current.expires_at
            subscription = (
                Subscription(
                    account=account,
                    plan=chosen.name,
                    status=status or (Status(current.status) if had and current.status else Status.ACTIVE),
                    starts_at=start,
                    anchor=anchor,
                    expires_at=expires_at,
                ),
                chosen,
            )
        key = idempotency_key or f"import:{account}"
        try:
            outcome = self.store.import_row(
                account,
                subscription,
                balance,
                key=key,
                note=note,
                now=self.now(),
                ledger_retention=self.ledger_retention,
            )
        except BalanceCapReached as error:
            raise _cap_conflict(account, error.balance, balance) from None
        if subscription is not None:
            self._catch_up_terms(account, subscription[1])
        return outcome

    # Threshold events (the charge script raises them; the service delivers them, service/events.py)

    def set_alerts(self, account: str, alerts: Alerts) -> Alerts:
        """What the account's threshold events watch, in force from its next charge (``core.alerts``).

        The alert fields are replaced in one MULTI, and the account listed for delivery while it has any
        (``store.events.set_alert_fields``). What the script remembers (an expiry or a period already
        told) is kept, so that setting the same alerts again raises nothing twice; clearing every alert
        forgets it.
        """
        self.account(account)
        events.set_alert_fields(self.store, account, alerts.fields())
        return alerts

    def alerts(self, account: str) -> Alerts:
        self.account(account)
        return Alerts.from_fields(events.alert_fields(self.store, account))

    def recent_events(self, account: str, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events of the account's stream, oldest first (what the service delivers)."""
        self.account(account)
        return [{"stream_id": i, **fields} for i, fields in events.recent_events(self.store, account, limit)]


def _cap_conflict(account: str, balance: int, amount: int) -> Conflict:
    return Conflict(
        f"account '{account}' has {balance} credits; adding {amount} would pass the most a balance may "
        f"hold ({MAX_CREDITS}, exact in every step); nothing was changed"
    )


__all__ = [
    "OPERATOR_KEYS",
    "PAYMENT_KEYS",
    "USAGE_FIELDS",
    "AccountView",
    "Admin",
    "CreditResult",
    "InvalidDocument",
    "LedgerCheck",
    "LedgerEntry",
    "UsageRow",
    "account_view",
    "credits_per_day",
    "stream_bound",
]
