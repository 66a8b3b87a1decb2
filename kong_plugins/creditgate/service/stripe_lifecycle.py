"""Stripe's subscription lifecycle: its events become the account's status and plan, in the order they
happened.

    invoice.payment_failed          an active or trialing account becomes past_due, let through for the
                                    billing map's past_due_grace from the event's time (the gate checks
                                    grace_until); a failure again while past_due keeps the first grace
    customer.subscription.created   the subscription's status, mapped (STRIPE_STATUSES), and its plan:
    customer.subscription.updated   the first item's price mapped through the billing map's ``plans``
                                    (an unmapped price keeps the plan, with a warning); a trial that ends
                                    is an update to active
    customer.subscription.deleted   canceled (the plan is kept)
    invoice.paid                    a past_due account is active again (``after_invoice_paid``, called by
                                    the invoice's payment handling in webhooks.py)

Order: Stripe does not deliver events in order, and re-sends them. Each step carries its event's
``created`` time and the store applies it only if it is not older than the newest step applied
(``stripe_subscription_at``, store/lifecycle.py): a late event changes nothing, a re-sent one writes what
it wrote before.

An account without a subscription is subscribed when its Stripe subscription is active or trialing on a
mapped plan, in the same script that applies the step (store/lifecycle.py writes it as Admin.subscribe
does, with the same plan index and terms catch-up): an Admin.subscribe followed by the step would let an
older event's subscription land over a newer event applied in between. Other statuses open nothing
(``no_subscription``). An account that does not exist is opened only when the billing map says
``create_accounts: true``.

An event that can never apply (no account, an invalid or unknown account, a plan the map names that does
not exist, a status Stripe added since) is acknowledged with an outcome, an error-level log line and the
webhook metric's label, as in webhooks.py: Stripe would re-send it for days to no effect. A field of the
account's hash that does not parse raises StoreDataError (503): nothing is written, and Stripe's retries
apply the event once an operator has mended the account.
"""

from __future__ import annotations

import logging
from typing import Any

from creditgate.core.model import MAX_INSTANT, Plan, Status, check_account
from creditgate.errors import InvalidDocument, NotFound
from creditgate.service.billing_map import WebhookSettings, account_of, connected_elsewhere, field_at
from creditgate.service.state import Service
from creditgate.service.stripe_ledger import ack, named_account, unappliable
from creditgate.store import lifecycle
from creditgate.store.lifecycle import LifecycleStep, Opening

log = logging.getLogger("creditgate.service")

LIFECYCLE_EVENT_TYPES = frozenset(
    {
        "invoice.payment_failed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)

# Stripe's subscription statuses (the Subscription object's ``status``) as credit-gate's.
STRIPE_STATUSES: dict[str, Status] = {
    "active": Status.ACTIVE,
    "trialing": Status.TRIALING,
    "past_due": Status.PAST_DUE,
    "unpaid": Status.SUSPENDED,  # the retries ran out, the subscription is kept open
    "paused": Status.SUSPENDED,  # a trial ended without a payment method
    "incomplete": Status.SUSPENDED,  # the first payment has not succeeded yet
    "incomplete_expired": Status.CANCELED,  # the first payment never did: terminal
    "canceled": Status.CANCELED,
}
# The statuses that give an account without a subscription one.
OPENING_STATUSES = frozenset({Status.ACTIVE, Status.TRIALING})


def _instant(value: Any) -> int | None:
    """Unix seconds from an event, or None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INSTANT:
        return None
    return value


def _invoice_subscription(invoice: dict[str, Any]) -> str:
    """The subscription an invoice bills, "" for none: ``subscription`` before API version
    2025-03-31.basil, ``parent.subscription_details.subscription`` since (an id, or the object when
    expanded)."""
    for ref in (
        invoice.get("subscription"),
        field_at(invoice, "parent", "subscription_details", "subscription"),
    ):
        if isinstance(ref, dict):
            ref = ref.get("id")
        if isinstance(ref, str) and ref:
            return ref
    return ""


def _subscription_invoice(invoice: dict[str, Any]) -> bool:
    return _invoice_subscription(invoice) != ""


def _prices(subscription: dict[str, Any]) -> list[str]:
    """The price ids of a subscription's items, in order: ``items.data[].price`` (an object, or its id),
    else the item's legacy ``plan``; the subscription's own legacy ``plan`` when it lists no items."""
    found: list[str] = []
    items = field_at(subscription, "items", "data")
    for item in items if isinstance(items, list) else []:
        price = field_at(item, "price")
        if isinstance(price, dict):
            price = price.get("id")
        if not isinstance(price, str):
            price = field_at(item, "plan", "id")
        if isinstance(price, str) and price:
            found.append(price)
    legacy = field_at(subscription, "plan", "id")
    if not found and isinstance(legacy, str) and legacy:
        found.append(legacy)
    return found


def _plan_of(
    service: Service, settings: WebhookSettings, event: dict[str, Any], subscription: dict[str, Any]
) -> Plan | dict[str, Any] | None:
    """The plan the subscription's price maps to: the first item with a mapped price (the first item, as
    a rule: add-ons come after it), None to keep the account's plan, or the ack of an unknown plan."""
    prices = _prices(subscription)
    mapped = [settings.plans[p] for p in prices if p in settings.plans]
    if not mapped:
        if prices:
            log.warning(
                "credit-gate: Stripe %s %s: no price of %s is in the billing map's plans %s; plan kept",
                event.get("type"),
                event.get("id"),
                subscription.get("id"),
                prices,
            )
        return None
    try:
        return service.admin.plan(mapped[0])
    except (NotFound, InvalidDocument):
        return unappliable(
            event,
            "unknown_plan",
            f"the billing map maps its price to plan {mapped[0]!r}, which does not exist",
            plan=mapped[0],
        )


def _account(settings: WebhookSettings, event: dict[str, Any], obj: dict[str, Any]) -> str | dict[str, Any]:
    """The account the object is for, or the ack of an event that names none that can be."""
    return named_account(event, account_of(settings, obj))


def _answer(
    settings: WebhookSettings, event: dict[str, Any], account: str, step: LifecycleStep
) -> dict[str, Any]:
    if step.outcome == lifecycle.NO_ACCOUNT:
        why = (
            "this event opens no subscription"
            if settings.create_accounts
            else "the billing map does not set create_accounts: true"
        )
        return unappliable(event, "unknown_account", f"no account named {account!r} ({why})", account=account)
    if step.outcome == lifecycle.NO_SUBSCRIPTION:
        log.warning(
            "credit-gate: Stripe %s %s not applied: account %r has no subscription",
            event.get("type"),
            event.get("id"),
            account,
        )
        return ack(event, step.outcome, account=account)
    if step.outcome == lifecycle.STALE:
        log.info(
            "credit-gate: Stripe %s %s is older than account %r's last lifecycle event (%d): nothing changed",
            event.get("type"),
            event.get("id"),
            account,
            step.stripe_subscription_at,
        )
        return ack(event, step.outcome, account=account, stripe_subscription_at=step.stripe_subscription_at)
    log.info(
        "credit-gate: Stripe %s %s: account %r %s, status %s -> %s, plan %s -> %s",
        event.get("type"),
        event.get("id"),
        account,
        step.outcome,
        step.previous_status or "-",
        step.status,
        step.previous_plan or "-",
        step.plan,
    )
    return ack(
        event,
        step.outcome,
        account=account,
        status=step.status,
        previous_status=step.previous_status,
        plan=step.plan,
        previous_plan=step.previous_plan,
        grace_until=step.grace_until,
    )


def apply_lifecycle(service: Service, settings: WebhookSettings, event: dict[str, Any]) -> dict[str, Any]:
    """Apply one of LIFECYCLE_EVENT_TYPES (a signed, parsed event); returns the acknowledgement."""
    kind = event.get("type")
    if kind not in LIFECYCLE_EVENT_TYPES:
        return ack(event, "ignored")
    obj = field_at(event, "data", "object")
    created = _instant(event.get("created"))
    if (
        not isinstance(obj, dict)
        or not isinstance(event.get("id"), str)
        or not isinstance(obj.get("id"), str)
        or created is None
    ):
        return unappliable(event, "malformed_event", "the event or its object has no id, or no created time")
    if connected_elsewhere(settings, event):
        log.warning(
            "credit-gate: Stripe %s %s of connected account %r ignored: not in connect_accounts",
            kind,
            event["id"],
            event.get("account"),
        )
        return ack(event, "connect_account_not_mapped", connect_account=event.get("account"))
    account = _account(settings, event, obj)
    if isinstance(account, dict):
        return account
    store = service.admin.store
    if kind == "invoice.payment_failed":
        if not _subscription_invoice(obj):
            log.info("credit-gate: Stripe %s %s: not a subscription's invoice", kind, event["id"])
            return ack(event, "not_a_subscription", account=account)
        step = lifecycle.payment_failed(
            store, account, at=created, grace=settings.past_due_grace, subscription=_invoice_subscription(obj)
        )
        return _answer(settings, event, account, step)
    if kind == "customer.subscription.deleted":
        return _subscription_step(service, settings, event, account, created, Status.CANCELED, None)
    stripe_status = obj.get("status")
    status = STRIPE_STATUSES.get(stripe_status) if isinstance(stripe_status, str) else None
    if status is None:
        return unappliable(
            event, "unknown_status", f"Stripe status {stripe_status!r} is not one credit-gate maps"
        )
    plan = _plan_of(service, settings, event, obj)
    if isinstance(plan, dict):
        return plan
    return _subscription_step(service, settings, event, account, created, status, plan)


def _subscription_step(
    service: Service,
    settings: WebhookSettings,
    event: dict[str, Any],
    account: str,
    created: int,
    status: Status,
    plan: Plan | None,
) -> dict[str, Any]:
    """A customer.subscription.* event's step: a subscription opens only when active or trialing on a
    mapped plan, at the subscription's start and billing cycle anchor (its periods are Stripe's)."""
    obj = event["data"]["object"]
    opening = None
    if status in OPENING_STATUSES and plan is not None:
        starts_at = _instant(obj.get("start_date")) or created
        anchor = _instant(obj.get("billing_cycle_anchor")) or starts_at
        opening = Opening(starts_at, anchor, create=settings.create_accounts)
    step = lifecycle.subscription_changed(
        service.admin.store,
        account,
        at=created,
        status=status,
        grace=settings.past_due_grace,
        plan=plan,
        opening=opening,
        subscription=obj["id"],
    )
    return _answer(settings, event, account, step)


def after_invoice_paid(service: Service, settings: WebhookSettings, event: dict[str, Any]) -> str | None:
    """After an ``invoice.paid``'s credits: a past_due account whose subscription invoice is paid is
    active again. Returns "reactivated", or what the step did otherwise ("unchanged", "stale",
    "no_subscription"); None when the invoice bills no subscription or names no existing account (the
    payment's own handling reports those). A field that does not parse raises StoreDataError: the
    delivery fails and Stripe's retry, whose grant is already applied, tries this again."""
    obj = field_at(event, "data", "object")
    created = _instant(event.get("created"))
    if not isinstance(obj, dict) or created is None or not _subscription_invoice(obj):
        return None
    if connected_elsewhere(settings, event):
        return None
    account = account_of(settings, obj)
    if account is None:
        return None
    try:
        check_account(account)
    except InvalidDocument:
        return None
    step = lifecycle.invoice_paid(
        service.admin.store, account, at=created, subscription=_invoice_subscription(obj)
    )
    if step.outcome == lifecycle.NO_ACCOUNT:
        return None
    if step.outcome == lifecycle.APPLIED:
        log.info(
            "credit-gate: Stripe invoice.paid %s: account %r is active again (was past_due)",
            event.get("id"),
            account,
        )
        return "reactivated"
    return step.outcome


__all__ = [
    "LIFECYCLE_EVENT_TYPES",
    "OPENING_STATUSES",
    "STRIPE_STATUSES",
    "after_invoice_paid",
    "apply_lifecycle",
]
