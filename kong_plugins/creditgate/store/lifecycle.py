"""A subscription's lifecycle from a billing system (Stripe's events), applied in the order it happened.

Each step is one run of ``lua/lifecycle.lua``: the status (``past_due`` with its ``grace_until``), the plan,
and ``stripe_subscription_at``, the creation time of the newest event applied. A step older than that
changes nothing, so events delivered late or twice never put an older state over a newer one
(``service/stripe_lifecycle.py`` turns Stripe's events into these steps).

A step that moves the account to another plan keeps the plan index as ``RedisStore.change_plan`` and
``RedisStore.subscribe`` do (``plan_index.py``: on a Cluster the sets are kept around the script), and
then copies the plan's current terms if they changed since they were read, as ``Admin`` does after a
subscription.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from creditgate.core.model import MAX_INSTANT, Plan, Status
from creditgate.errors import StoreDataError, StoreError
from creditgate.store.replies import as_text
from creditgate.store.store import RedisStore, _script_source

# What a step did (lifecycle.lua's outcomes).
APPLIED = "applied"  # the status, the plan or grace_until changed
UNCHANGED = "unchanged"  # applied, and nothing to change (a re-sent event, a step the status ignores)
SUBSCRIBED = "subscribed"  # an account without a subscription was given one
STALE = "stale"  # older than the newest step applied: nothing written
NO_SUBSCRIPTION = "no_subscription"  # the account has no subscription and the step opens none
NO_ACCOUNT = "no_account"  # the account does not exist and the step opens none
OTHER_SUBSCRIPTION = "other_subscription"  # about a subscription the account has moved on from
OUTCOMES = frozenset({APPLIED, UNCHANGED, SUBSCRIBED, STALE, NO_SUBSCRIPTION, NO_ACCOUNT, OTHER_SUBSCRIPTION})


@dataclass(frozen=True)
class LifecycleStep:
    """What one step did: the account's status and plan before and after it (as found when nothing was
    written), its grace_until and the creation time of the newest step applied."""

    outcome: str
    previous_status: str
    status: str
    previous_plan: str
    plan: str
    grace_until: int
    stripe_subscription_at: int

    @property
    def written(self) -> bool:
        return self.outcome in (APPLIED, UNCHANGED, SUBSCRIBED)


@dataclass(frozen=True)
class LifecycleState:
    """The lifecycle fields of an account's hash (absent: "" or 0)."""

    status: str
    plan: str
    grace_until: int
    stripe_subscription_at: int


@dataclass(frozen=True)
class Opening:
    """How a step opens a subscription for an account that has none: its start and period anchor, and
    whether the account's hash may be created (``create``: the billing map's create_accounts)."""

    starts_at: int
    anchor: int
    create: bool = False


_INSTANT = re.compile(r"0|[1-9][0-9]{0,11}")  # as _lib.lua's strict_int reads it


@lru_cache(maxsize=1)
def _source() -> str:
    return _script_source("lifecycle")


def _grace_until(at: int, grace: int) -> int:
    return min(at + grace, MAX_INSTANT)


def _run(store: RedisStore, account: str, args: Sequence[Any]) -> LifecycleStep:
    # Registered on the store's client as store.py registers its scripts; a Script only hashes the
    # source, and redis-py (or the Cluster keyspace) loads it on NOSCRIPT.
    script = store.client.register_script(_source())
    reply = store._call(script, [store.keys.account(account).state], args)
    return _step_reply(reply)


def _step_reply(reply: Any) -> LifecycleStep:
    outcome, previous_status, status, previous_plan, plan, grace_until, at = (as_text(v) for v in reply)
    if outcome not in OUTCOMES:
        raise StoreError(f"lifecycle.lua answered an unknown outcome {outcome!r}")
    return LifecycleStep(outcome, previous_status, status, previous_plan, plan, int(grace_until), int(at))


def _args(
    at: int,
    op: str,
    *,
    status: str = "",
    grace: int = 0,
    plan: Plan | None = None,
    opening: Opening | None = None,
    index: Sequence[str],
    subscription: str = "",
) -> list[Any]:
    terms: list[Any] = ["", "", 0, "0"]
    if plan is not None:
        terms = [plan.name, plan.period.value, plan.allowance, "1" if plan.prepaid else "0"]
    start = (opening.starts_at, opening.anchor) if opening is not None else (0, 0)
    return [
        at,
        op,
        status,
        _grace_until(at, grace),
        *terms,
        *start,
        "1" if opening is not None and plan is not None else "0",
        "1" if opening is not None and opening.create else "0",
        *index,
        subscription,
    ]


def payment_failed(
    store: RedisStore, account: str, *, at: int, grace: int, subscription: str = ""
) -> LifecycleStep:
    """A payment of ``subscription`` failed at ``at``: an active or trialing account becomes past_due,
    let through for ``grace`` seconds from ``at`` (a past_due one keeps the grace of its first failure)."""
    index = store._plan_index.args(account)
    return _run(
        store, account, _args(at, "payment_failed", grace=grace, index=index, subscription=subscription)
    )


def invoice_paid(store: RedisStore, account: str, *, at: int, subscription: str = "") -> LifecycleStep:
    """An invoice of ``subscription`` was paid at ``at``: a past_due account is active again (its grace
    cleared)."""
    index = store._plan_index.args(account)
    return _run(store, account, _args(at, "invoice_paid", index=index, subscription=subscription))


def subscription_changed(
    store: RedisStore,
    account: str,
    *,
    at: int,
    status: Status,
    grace: int,
    plan: Plan | None = None,
    opening: Opening | None = None,
    subscription: str = "",
) -> LifecycleStep:
    """The subscription's state at ``at``: ``status`` (past_due with ``grace`` seconds from ``at`` unless
    already past_due), and ``plan`` when given (None: the account keeps its plan).

    An account without a subscription is subscribed to ``plan`` only when ``opening`` is given (the
    caller decides which statuses open one), and an account that does not exist is created only when
    ``opening.create`` is set; otherwise nothing is written (NO_SUBSCRIPTION, NO_ACCOUNT).
    """
    index = store._plan_index
    if plan is not None:
        index.before(account, plan.name)
    args = _args(
        at,
        "subscription",
        status=status.value,
        grace=grace,
        plan=plan,
        opening=opening,
        index=index.args(account),
        subscription=subscription,
    )
    step = _run(store, account, args)
    if plan is None:
        return step
    # As RedisStore.change_plan: the set added to before is put right by the plan the hash names.
    index.repair(account, [step.previous_plan, plan.name], step.plan if step.written else None)
    if step.outcome == SUBSCRIBED:
        store.add_account(account)
        # The store is marked already (the plan was read from it, and plans are written by operators,
        # who mark it first); written again so that a subscription never lives in an unmarked store.
        store.mark_store()
    if step.written and step.plan == plan.name and step.previous_plan != plan.name:
        _catch_up_terms(store, account, plan)
    return step


def _catch_up_terms(store: RedisStore, account: str, written: Plan) -> None:
    """The plan's terms again after they were copied into the account (Admin._catch_up_terms says why:
    a plan applied between its read and the account joining its index set would not reach it)."""
    current = store.get_plan(written.name)
    if current is not None and current != written:
        store.sync_plan_terms(current, account)


def lifecycle_state(store: RedisStore, account: str) -> LifecycleState:
    """The account's lifecycle fields, as the gate and the next step will read them."""
    fields = ("status", "plan", "grace_until", "stripe_subscription_at")
    raw = store._run("HMGET", store.keys.account(account).state, *fields)
    status, plan, grace, at = (as_text(v) if v is not None else "" for v in raw)

    def number(name: str, text: str) -> int:
        if text == "":
            return 0
        if not _INSTANT.fullmatch(text) or int(text) > MAX_INSTANT:
            raise StoreDataError(
                f"bad data in Redis: account '{account}' field {name}: is not a Unix time", key=account
            )
        return int(text)

    return LifecycleState(status, plan, number("grace_until", grace), number("stripe_subscription_at", at))


__all__ = [
    "APPLIED",
    "NO_ACCOUNT",
    "NO_SUBSCRIPTION",
    "STALE",
    "SUBSCRIBED",
    "UNCHANGED",
    "LifecycleState",
    "LifecycleStep",
    "Opening",
    "invoice_paid",
    "lifecycle_state",
    "payment_failed",
    "subscription_changed",
]
