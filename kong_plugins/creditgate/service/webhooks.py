"""Payments in: Stripe's signed webhooks and a generic signed webhook, each payment applied once.

Stripe signs ``<timestamp>.<body>`` with the endpoint's signing secret (HMAC-SHA256, the
``Stripe-Signature`` header); the ``stripe`` package checks it and the replay tolerance. Stripe re-sends
an event until it gets a 2xx, for days: so every event that is not applied on purpose is still
acknowledged (and logged), and only a Redis failure answers 503, which makes Stripe try again. An event
that can never apply (an account name that is empty or holds a control character, an account that does
not exist, a payment that maps to no credits) is acknowledged with an ``outcome`` naming why, an
error-level log line and the webhook metric's ``outcome`` label. A webhook opens no account unless the
billing map says ``create_accounts: true``: a typo in metadata must not put paid credits in a new
account nobody uses. Events of Stripe Connect accounts (``event.account``) apply only for the accounts
the map lists in ``connect_accounts``; the others are acknowledged as ``connect_account_not_mapped``.
Bad bytes (a body that is not UTF-8, a header that is not ASCII or not a number) answer 400.

Once only, in any order: a Stripe payment event grants its payment once, under the payment's canonical
key, whichever of its references (Checkout session, invoice, PaymentIntent, charge) the event names;
refunds and disputes move its credits in proportion to the money reversed, and wait for their payment
when they come first (``service/stripe_ledger.py``, ``store/payments.py``, rules in
``core/payments.py``). Subscription events set the account's status and plan
(``service/stripe_lifecycle.py``). Events of an API version credit-gate does not read are acknowledged
as ``unsupported_api_version``.

The generic webhook is for other billing systems: ``Webhook-Timestamp: <unix seconds>`` and
``Webhook-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">``, the same scheme; its events carry
their own id, and ``webhook:<id>`` is the key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Annotated, Any

import stripe
from fastapi import APIRouter, Header, Request

from creditgate.core.model import MAX_CREDITS
from creditgate.errors import IdempotencyKeyReused, NotFound
from creditgate.ops.admin import PAYMENT_KEYS
from creditgate.service.billing_map import (
    GENERIC_SECRET_ENV,
    STRIPE_SECRET_ENV,
    WebhookSettings,
    connected_elsewhere,
    field_at,
    settings_of,
)
from creditgate.service.body import parse_json, read_body, validate
from creditgate.service.metrics import count_webhook
from creditgate.service.problems import ApiProblem
from creditgate.service.state import Service, service_of
from creditgate.service.stripe_events import PAYMENT_EVENT_TYPES, SUPPORTED_API_VERSIONS, read_payment_event
from creditgate.service.stripe_ledger import ack, apply_payment_event, unappliable
from creditgate.service.stripe_lifecycle import LIFECYCLE_EVENT_TYPES, after_invoice_paid, apply_lifecycle

log = logging.getLogger("creditgate.service")

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def apply_stripe_event(service: Service, event: dict[str, Any]) -> dict[str, Any]:
    """One verified Stripe event: a payment, link or reversal into the payments ledger, a subscription's
    lifecycle into the account; anything else acknowledged as ignored."""
    settings = settings_of(service)
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in PAYMENT_EVENT_TYPES | LIFECYCLE_EVENT_TYPES:
        log.info("credit-gate: Stripe event %s (%s) acknowledged, not handled", event.get("id"), kind)
        return ack(event, "ignored")
    obj = field_at(event, "data", "object")
    if (
        not isinstance(obj, dict)
        or not isinstance(event.get("id"), str)
        or not isinstance(obj.get("id"), str)
    ):
        return unappliable(event, "malformed_event", "the event or its object has no id")
    # Stripe Connect: an event of a connected account (``account``) is about that account's customers
    # and money, not the platform's: it applies only when the operator lists the account.
    connected = event.get("account")
    if connected_elsewhere(settings, event):
        log.warning(
            "credit-gate: Stripe %s %s of connected account %r ignored: not in connect_accounts",
            kind,
            event["id"],
            connected,
        )
        return ack(event, "connect_account_not_mapped", connect_account=connected)
    version = event.get("api_version")
    if version not in SUPPORTED_API_VERSIONS:
        why = f"API version {version!r} is not one credit-gate reads (docs/service.md lists them)"
        return unappliable(event, "unsupported_api_version", why)
    if kind in LIFECYCLE_EVENT_TYPES:
        return apply_lifecycle(service, settings, event)
    answer = apply_payment_event(service, settings, event, read_payment_event(settings, event))
    if kind == "invoice.paid" and answer["outcome"] in ("granted", "already_applied", "nothing_paid"):
        subscription = after_invoice_paid(service, settings, event)
        if subscription is not None:
            answer["subscription"] = subscription
    return answer


@router.post("/stripe", responses={400: {"description": "Bad signature or body"}})
async def stripe_webhook(
    request: Request,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> dict[str, Any]:
    """Stripe's events: paid checkouts and invoices become grants, refunds and disputes adjustments."""
    service = service_of(request)
    settings = settings_of(service)
    if not settings.stripe_secret:
        raise ApiProblem(404, "webhook_not_configured", f"set {STRIPE_SECRET_ENV} to receive Stripe's events")
    payload = await read_body(request, service.body_limit)
    # The stripe package decodes the body as UTF-8 and compares the header's signatures as str (which
    # raises on non-ASCII): both are checked first, so that bad bytes are a 400 and not a traceback.
    if stripe_signature is not None and not stripe_signature.isascii():
        raise ApiProblem(400, "bad_signature", "the Stripe-Signature header is not ASCII")
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiProblem(400, "malformed_body", "the body is not UTF-8") from None
    try:
        stripe.WebhookSignature.verify_header(
            payload, stripe_signature, settings.stripe_secret, settings.tolerance
        )
    except stripe.SignatureVerificationError as error:
        log.warning("credit-gate: Stripe webhook refused: %s", error.user_message or error)
        raise ApiProblem(400, "bad_signature", "the Stripe-Signature header does not verify") from None
    event = parse_json(payload)
    if not isinstance(event, dict):
        raise ApiProblem(400, "malformed_body", "a Stripe event is a JSON object")
    from starlette.concurrency import run_in_threadpool

    answer = await run_in_threadpool(apply_stripe_event, service, event)
    count_webhook(service, "stripe", str(answer["outcome"]))
    return answer


GENERIC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "type", "account", "amount"],
    "properties": {
        "id": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,200}$"},
        "type": {"enum": ["grant", "adjustment"]},
        "account": {"type": "string", "minLength": 1, "maxLength": 256},
        "amount": {"type": "integer", "minimum": 1, "maximum": MAX_CREDITS},
        "note": {"type": "string", "maxLength": 1000},
        "create": {"type": "boolean"},
    },
}


def generic_signature(secret: str, timestamp: str, body: bytes) -> str:
    return "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _verify_generic(
    settings: WebhookSettings, timestamp: str | None, signature: str | None, body: bytes
) -> None:
    if not signature or not timestamp:
        raise ApiProblem(400, "bad_signature", "send Webhook-Timestamp and Webhook-Signature: v1=<hex>")
    # ASCII digits only ("²" is a digit to str.isdigit and not to int), and at most 12 of them (Unix
    # seconds until the year 33658), so that int() neither fails nor works on thousands of digits.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise ApiProblem(400, "bad_signature", "Webhook-Timestamp must be Unix seconds (digits only)")
    if abs(time.time() - int(timestamp)) > settings.tolerance:
        raise ApiProblem(400, "bad_signature", f"the timestamp is more than {settings.tolerance} s off")
    expected = generic_signature(settings.generic_secret, timestamp, body).encode()
    offered = [s.strip().encode() for s in signature.split(",")]  # several while a secret is rotated
    if not any(hmac.compare_digest(expected, s) for s in offered):
        raise ApiProblem(400, "bad_signature", "the Webhook-Signature does not verify")


@router.post("/generic", responses={400: {"description": "Bad signature or body"}})
async def generic_webhook(
    request: Request,
    timestamp: Annotated[str | None, Header(alias="Webhook-Timestamp")] = None,
    signature: Annotated[str | None, Header(alias="Webhook-Signature")] = None,
) -> dict[str, Any]:
    """A grant or adjustment from any billing system, signed like Stripe's; applied once per event id."""
    service = service_of(request)
    settings = settings_of(service)
    if not settings.generic_secret:
        raise ApiProblem(404, "webhook_not_configured", f"set {GENERIC_SECRET_ENV} to receive signed events")
    body = await read_body(request, service.body_limit)
    _verify_generic(settings, timestamp, signature, body)
    event = parse_json(body)
    validate(event, GENERIC_SCHEMA)
    from starlette.concurrency import run_in_threadpool

    def apply() -> dict[str, Any]:
        key, note = f"webhook:{event['id']}", event.get("note", "") or f"webhook {event['id']}"
        # The event asks; the operator's billing map decides whether a webhook may open an account.
        create = bool(event.get("create")) and settings.create_accounts
        try:
            if event["type"] == "grant":
                result = service.admin.grant(
                    event["account"],
                    event["amount"],
                    note=note,
                    idempotency_key=key,
                    key_namespace=PAYMENT_KEYS,
                    create=create,
                )
            else:
                result = service.admin.adjust_down(
                    event["account"],
                    event["amount"],
                    note=note,
                    idempotency_key=key,
                    key_namespace=PAYMENT_KEYS,
                )
        except NotFound:
            # Acknowledged: a sender that re-sends until it gets a 2xx would never get one.
            log.error(
                "credit-gate: webhook event %s not applied (unknown_account): no account named %r%s",
                event["id"],
                event["account"],
                "" if settings.create_accounts else " (the billing map does not set create_accounts: true)",
            )
            return {"event": event["id"], "outcome": "unknown_account", "account": event["account"]}
        except IdempotencyKeyReused as error:
            # Acknowledged too: the same event id was sent before with another type or amount.
            log.error(
                "credit-gate: webhook event %s not applied (idempotency_conflict): %s", event["id"], error
            )
            return {"event": event["id"], "outcome": "idempotency_conflict", "account": event["account"]}
        return {
            "event": event["id"],
            "outcome": "applied" if result.applied else "already_applied",
            "balance": result.balance,
            "ledger_id": result.ledger_id,
        }

    answer = await run_in_threadpool(apply)
    count_webhook(service, "generic", str(answer["outcome"]))
    return answer


__all__ = ["WebhookSettings", "generic_signature", "router"]
