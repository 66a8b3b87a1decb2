"""A Stripe payment event into the payments ledger: the event read (``stripe_events.py``), routed to its
payment and applied in the account's slot (``store/payments.py``), answered with what it did.

Every event that cannot apply is acknowledged all the same, with an ``outcome`` naming why and an
error-level log line (the webhook metric counts outcomes): Stripe would send it again for days, and it
would never apply. Only a Redis failure answers 503, which makes Stripe try again; both steps are
idempotent, so a retry after a crash between them finishes the event.
"""

from __future__ import annotations

import logging
from typing import Any

from creditgate.core.model import check_account
from creditgate.errors import InvalidDocument, NotFound
from creditgate.service.billing_map import WebhookSettings
from creditgate.service.state import Service
from creditgate.service.stripe_events import PaymentEvent
from creditgate.store import payments

log = logging.getLogger("creditgate.service")


def ack(event: dict[str, Any], outcome: str, **extra: Any) -> dict[str, Any]:
    return {"event": event.get("id"), "type": event.get("type"), "outcome": outcome, **extra}


def unappliable(event: dict[str, Any], outcome: str, why: str, **extra: Any) -> dict[str, Any]:
    """Acknowledged all the same: Stripe would re-send it for days and it would never apply. The error
    log line and the ``outcome`` label of the webhook metric are how an operator learns of it."""
    log.error(
        "credit-gate: Stripe %s %s not applied (%s): %s", event.get("type"), event.get("id"), outcome, why
    )
    return ack(event, outcome, **extra)


def named_account(event: dict[str, Any], account: str | None) -> str | dict[str, Any]:
    """The account an event names, checked (not empty, no control character), or the acknowledgement
    that says why it names none that can be."""
    if account is None:
        return unappliable(event, "no_account", "it names no account (metadata or customers map)")
    try:
        return check_account(account)
    except InvalidDocument as error:
        return unappliable(event, "invalid_account", f"the account {account!r} {error}", account=account)


def _payer(service: Service, settings: WebhookSettings, event: dict[str, Any], account: str | None) -> Any:
    """The account a payment is for, checked: its name, and that it exists unless the map lets a payment
    open it. Returns the account, or the acknowledgement that says why not."""
    named = named_account(event, account)
    if isinstance(named, str) and not settings.create_accounts:
        try:
            service.admin.account(named)
        except NotFound:
            why = f"no account named {named!r} (the billing map does not set create_accounts: true)"
            return unappliable(event, "unknown_account", why, account=named)
    return named


def _adopt(service: Service, read: PaymentEvent) -> payments.Route | None:
    """A reversal of a payment the version before granted (``store/payments.py`` legacy records): the
    payment is recorded as granted, without its credits again, and the reversal routed to it. What the
    version before took back itself for a reversal counts as taken (``store/payments.py``), so that it
    is not taken again, and is given back when a dispute it took for is won."""
    store = service.admin.store
    legacy = payments.legacy_payment(store, read.refs)
    if legacy is None or not isinstance(legacy.get("account"), str):
        return None
    account = legacy["account"]
    paid, credits = legacy.get("amount"), legacy.get("credits")
    if not (isinstance(paid, int) and isinstance(credits, int) and paid > 0 and credits > 0):
        return None
    found = payments.route(store, read.refs, account, ())
    if found.state != "owned":
        return None
    payments.apply(
        store,
        account,
        found.key,
        now=service.admin.now(),
        pay=(paid, "", credits),
        adopt=True,
        waiting=found.waiting,
        note="stripe payment of the version before",
        ledger_retention=service.admin.ledger_retention,
    )
    return found


def apply_payment_event(
    service: Service, settings: WebhookSettings, event: dict[str, Any], read: PaymentEvent
) -> dict[str, Any]:
    """One payment, link or reversal event: routed to its payment, then applied to its account."""
    if read.outcome is not None:
        if read.error:
            return unappliable(event, read.outcome, read.why or read.outcome)
        log.info(
            "credit-gate: Stripe %s %s: %s", event.get("type"), event.get("id"), read.why or read.outcome
        )
        return ack(event, read.outcome)
    account = ""
    if read.pay is not None:
        payer = _payer(service, settings, event, read.account)
        if not isinstance(payer, str):
            return payer  # type: ignore[no-any-return]
        account = payer
    if read.reversals and not settings.refunds:
        log.warning(
            "credit-gate: Stripe %s %s not applied: refunds are turned off", event["type"], event["id"]
        )
        return ack(event, "refunds_off")
    store = service.admin.store
    found = payments.route(store, read.refs, account, read.reversals)
    if found.state == "conflict":
        why = f"its references {list(read.refs)} name a payment of {found.account!r} already granted"
        return unappliable(event, "payment_conflict", why, account=found.account)
    if found.state == "waiting" and read.pay is None:
        adopted = _adopt(service, read)
        if adopted is not None:
            found = adopted
    if found.state == "waiting":
        log.info("credit-gate: Stripe %s %s waits for its payment", event["type"], event["id"])
        return ack(event, "waiting_for_payment", payment=found.key)
    if read.pay is not None:
        store.mark_store()
    applied = payments.apply(
        store,
        found.account,
        found.key,
        now=service.admin.now(),
        pay=read.pay,
        reversals=read.reversals,
        waiting=found.waiting,
        note=f"stripe {event['type']} {event['id']}",
        ledger_retention=service.admin.ledger_retention,
    )
    if applied.outcome == "balance_cap":
        why = "the grant would take the balance past its bound"
        return unappliable(event, "balance_cap", why, account=found.account, payment=found.key)
    if found.waiting != "[]":
        payments.settled(store, found.key)
    if read.pay is not None and applied.granted:
        store.add_account(found.account)
    if applied.granted:
        outcome = "granted"
    elif applied.taken or applied.held:
        outcome = "reversed"
    elif read.pay is None and not read.reversals:
        outcome = "linked"  # references joined (a subscription's session, an invoice's payment)
    elif applied.outcome == "unchanged":
        outcome = "already_applied"
    else:
        outcome = "recorded"
    return ack(
        event,
        outcome,
        account=found.account,
        payment=found.key,
        credits=applied.granted,
        taken=applied.taken,
        held=applied.held,
        balance=applied.balance,
        debt=applied.debt,
        frozen=applied.frozen,
    )


__all__ = ["ack", "apply_payment_event", "named_account", "unappliable"]
