"""The operators' Python API: plans, subscriptions and credits.

This is what a billing integration imports, and what the ``credit-gate`` CLI is a thin layer over.
Every method validates its input before touching Redis and raises a ``CreditGateError`` subclass with
a message an operator can act on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan, Status, Subscription, check_account, credits
from creditgate.errors import Conflict, InvalidDocument, NotFound
from creditgate.store.redis_store import (
    DEFAULT_LEDGER_RETENTION,
    AccountState,
    CreditResult,
    InsufficientBalance,
    RedisStore,
)


class Admin:
    """Operations on one credit-gate store."""

    def __init__(
        self,
        store: RedisStore,
        *,
        ledger_retention: int = DEFAULT_LEDGER_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ledger_retention = ledger_retention
        self.clock = clock

    @classmethod
    def connect(cls, settings: RedisSettings, prefix: str = "credit-gate", **options: object) -> Admin:
        return cls(RedisStore.from_settings(settings, prefix), **options)  # type: ignore[arg-type]

    def now(self) -> int:
        return int(self.clock())

    # Plans

    def apply_plan(self, plan: Plan) -> list[str]:
        """Create or replace a plan; its new terms reach every subscribed account at once.

        Returns the accounts whose terms were updated.
        """
        self.store.put_plan(plan)
        return [a for a in self.store.plan_accounts(plan.name) if self.store.sync_plan_terms(plan, a)]

    def plan(self, name: str) -> Plan:
        plan = self.store.get_plan(name)
        if plan is None:
            raise NotFound(f"no plan named '{name}'; `credit-gate plans list` shows the plans")
        return plan

    def plans(self) -> list[Plan]:
        return [p for p in (self.store.get_plan(n) for n in self.store.plan_names()) if p is not None]

    def delete_plan(self, name: str, *, force: bool = False) -> None:
        self.plan(name)
        subscribed = [a for a in self.store.plan_accounts(name) if self.store.account_state(a).plan == name]
        if subscribed and not force:
            raise Conflict(
                f"plan '{name}' is used by {len(subscribed)} account(s) (e.g. {subscribed[0]}); "
                "move them to another plan first, or force the deletion"
            )
        self.store.delete_plan(name)

    # Subscriptions

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
        return subscription

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
            raise NotFound(f"no account named '{account}'")
        return state

    # Credits

    def grant(self, account: str, amount: int, *, note: str = "", idempotency_key: str = "") -> CreditResult:
        """Top up a balance. The same idempotency key counts once, however often it is retried."""
        check_account(account)
        credits(amount, "amount", minimum=1)
        result = self.store.credit(
            account,
            "grant",
            amount,
            now=self.now(),
            note=note,
            idempotency_key=idempotency_key,
            ledger_retention=self.ledger_retention,
        )
        self.store.add_account(account)
        return result

    def adjust_down(
        self, account: str, amount: int, *, note: str = "", idempotency_key: str = ""
    ) -> CreditResult:
        """Take credits away; refused, with nothing changed, if the balance would go below zero."""
        check_account(account)
        credits(amount, "amount", minimum=1)
        try:
            return self.store.credit(
                account,
                "adjust",
                -amount,
                now=self.now(),
                note=note,
                idempotency_key=idempotency_key,
                ledger_retention=self.ledger_retention,
            )
        except InsufficientBalance as error:
            raise Conflict(
                f"account '{account}' has {error.balance} credits; cannot take away {amount}"
            ) from None


__all__ = ["Admin", "InvalidDocument"]
