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

Once only: each grant or adjustment carries an idempotency key made of the Stripe object it comes
from (``stripe:checkout:<session>``, ``stripe:invoice:<invoice>``, ``stripe:refund:<refund>``,
``stripe:dispute:<dispute>``, and ``stripe:dispute_won:<dispute>`` for a dispute closed as won, which
gives those credits back). That is stricter than the event id: a re-sent event has the same id and
the same object, and two different events about one payment (``checkout.session.completed`` then
``checkout.session.async_payment_succeeded``) still credit it once.

The generic webhook is for other billing systems: ``Webhook-Timestamp: <unix seconds>`` and
``Webhook-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">``, the same scheme; its events carry
their own id, and ``webhook:<id>`` is the key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import stripe
from fastapi import APIRouter, Header, Request

from creditgate.core.model import MAX_CREDITS, check_account
from creditgate.errors import ConfigError, Conflict, IdempotencyKeyReused, InvalidDocument, NotFound
from creditgate.ops.admin import PAYMENT_KEYS
from creditgate.ops.documents import read_document
from creditgate.service.body import parse_json, read_body, validate
from creditgate.service.metrics import count_webhook
from creditgate.service.problems import ApiProblem
from creditgate.service.state import Service, service_of
from creditgate.store import payments

log = logging.getLogger("creditgate.service")

STRIPE_SECRET_ENV = "CREDIT_GATE_STRIPE_WEBHOOK_SECRET"
GENERIC_SECRET_ENV = "CREDIT_GATE_WEBHOOK_SECRET"
DEFAULT_TOLERANCE = 300
DEFAULT_METADATA_KEY = "credit_gate_account"


@dataclass(frozen=True)
class WebhookSettings:
    """Secrets from the environment; the mapping from the operator's file (``--billing-map``)."""

    stripe_secret: str = ""
    generic_secret: str = ""
    tolerance: int = DEFAULT_TOLERANCE
    credits: dict[str, int] = field(default_factory=dict)  # Stripe price or product id -> credits per unit
    customers: dict[str, str] = field(default_factory=dict)  # Stripe customer id -> account
    metadata_key: str = DEFAULT_METADATA_KEY
    refunds: bool = True  # refunds and disputes take the credits back (off: logged only)
    create_accounts: bool = False  # a paid event may open the account it names (off: it must exist)
    connect_accounts: frozenset[str] = frozenset()  # Stripe Connect accounts whose events apply

    @classmethod
    def load(cls, path: Path | None, environ: dict[str, str] | None = None) -> WebhookSettings:
        env = os.environ if environ is None else environ
        document: Any = read_document(path) if path is not None else {}
        if not isinstance(document, dict):
            raise ConfigError(f"{path}: must be a mapping with credits, customers, metadata_key, refunds")
        unknown = set(document) - {
            "credits",
            "customers",
            "metadata_key",
            "refunds",
            "tolerance",
            "create_accounts",
            "connect_accounts",
        }
        if unknown:
            raise ConfigError(f"{path}: unknown field(s) {sorted(unknown)}")
        credits = document.get("credits") or {}
        for name, value in credits.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CREDITS:
                raise ConfigError(f"{path}: credits.{name} must be a whole number of credits, got {value!r}")
        customers = document.get("customers") or {}
        if not all(isinstance(v, str) and v for v in customers.values()):
            raise ConfigError(f"{path}: customers must map Stripe customer ids to account names")
        tolerance = document.get("tolerance", DEFAULT_TOLERANCE)
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or not 1 <= tolerance <= 86_400:
            raise ConfigError(f"{path}: tolerance must be 1-86400 seconds")
        create_accounts = document.get("create_accounts", False)
        if not isinstance(create_accounts, bool):
            raise ConfigError(f"{path}: create_accounts must be true or false, got {create_accounts!r}")
        connect_accounts = document.get("connect_accounts") or []
        if not isinstance(connect_accounts, list) or not all(
            isinstance(a, str) and a.startswith("acct_") for a in connect_accounts
        ):
            raise ConfigError(f"{path}: connect_accounts must be a list of Stripe account ids (acct_...)")
        return cls(
            stripe_secret=env.get(STRIPE_SECRET_ENV, ""),
            generic_secret=env.get(GENERIC_SECRET_ENV, ""),
            tolerance=tolerance,
            credits={str(k): v for k, v in credits.items()},
            customers={str(k): v for k, v in customers.items()},
            metadata_key=str(document.get("metadata_key", DEFAULT_METADATA_KEY)),
            refunds=bool(document.get("refunds", True)),
            create_accounts=create_accounts,
            connect_accounts=frozenset(connect_accounts),
        )


def settings_of(service: Service) -> WebhookSettings:
    settings = service.extra.get("webhooks")
    return settings if isinstance(settings, WebhookSettings) else WebhookSettings()


router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def _get(obj: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(name)
    return obj


def _account(settings: WebhookSettings, obj: dict[str, Any]) -> str | None:
    for metadata in (
        _get(obj, "metadata"),
        _get(obj, "subscription_details", "metadata"),
        _get(obj, "parent", "subscription_details", "metadata"),
    ):
        if isinstance(metadata, dict) and isinstance(metadata.get(settings.metadata_key), str):
            return str(metadata[settings.metadata_key])
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return settings.customers.get(customer) if isinstance(customer, str) else None


def _line_credits(settings: WebhookSettings, lines: Any) -> int:
    """Credits for the lines of an invoice or an expanded checkout session: per unit of each mapped price
    (or, failing that, its product), times the quantity."""
    total = 0
    for line in lines if isinstance(lines, list) else []:
        if not isinstance(line, dict):
            continue
        price = _get(line, "price") or _get(line, "pricing", "price_details") or {}
        price_id = price.get("id") or price.get("price") if isinstance(price, dict) else price
        product = price.get("product") if isinstance(price, dict) else None
        quantity = line.get("quantity", 1)
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
            quantity = 0  # a line Stripe would never send buys nothing
        per_unit = settings.credits.get(str(price_id)) or settings.credits.get(str(product)) or 0
        total += per_unit * quantity
    return total


def _whole(value: Any) -> int:
    """An amount of money from an event: a whole number of the currency's smallest unit, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _ack(event: dict[str, Any], outcome: str, **extra: Any) -> dict[str, Any]:
    return {"event": event.get("id"), "type": event.get("type"), "outcome": outcome, **extra}


def _unappliable(event: dict[str, Any], outcome: str, why: str, **extra: Any) -> dict[str, Any]:
    """Acknowledged all the same: Stripe would re-send it for days and it would never apply. The error
    log line and the ``outcome`` label of the webhook metric are how an operator learns of it."""
    log.error(
        "credit-gate: Stripe %s %s not applied (%s): %s", event.get("type"), event.get("id"), outcome, why
    )
    return _ack(event, outcome, **extra)


def _grant_payment(
    service: Service,
    event: dict[str, Any],
    key: str,
    account: str | None,
    credits: int,
    payment: dict[str, Any],
) -> dict[str, Any]:
    if account is None:
        return _unappliable(event, "no_account", "it names no account (metadata or customers map)")
    try:
        check_account(account)
    except InvalidDocument as error:
        return _unappliable(event, "invalid_account", f"the account {account!r} {error}", account=account)
    if credits <= 0 or credits > MAX_CREDITS:
        return _unappliable(event, "no_mapped_price", "it maps to no credits (or too many)", account=account)
    create = settings_of(service).create_accounts
    unknown = f"no account named {account!r} (the billing map does not set create_accounts: true)"
    # Checked before the payment is recorded, so that no record names an account that never got credits.
    if not create:
        try:
            service.admin.account(account)
        except NotFound:
            return _unappliable(event, "unknown_account", unknown, account=account)
    # The payment is recorded before the grant, so that whenever a grant exists a refund can find it.
    payments.record_payment(service.admin.store, payment["refs"], account, credits, payment["amount"])
    try:
        result = service.admin.grant(
            account,
            credits,
            note=f"stripe {event['type']}",
            idempotency_key=key,
            key_namespace=PAYMENT_KEYS,
            create=create,
        )
    except NotFound:  # removed since the check above
        return _unappliable(event, "unknown_account", unknown, account=account)
    except IdempotencyKeyReused as error:  # this payment's key granted another amount (the map changed)
        return _unappliable(event, "idempotency_conflict", str(error), account=account)
    return _ack(event, "granted" if result.applied else "already_applied", account=account, credits=credits)


def _take_back(
    service: Service, event: dict[str, Any], key: str, refs: list[str], amount: Any
) -> dict[str, Any]:
    settings = settings_of(service)
    if not settings.refunds:
        log.warning(
            "credit-gate: Stripe %s %s not applied: refunds are turned off", event["type"], event["id"]
        )
        return _ack(event, "refunds_off")
    record = payments.find_payment(service.admin.store, refs)
    if record is None or not _whole(amount) or not _whole(record.get("amount")):
        log.warning("credit-gate: Stripe %s %s matches no credited payment", event["type"], event["id"])
        return _ack(event, "no_payment")
    # Proportional to the share of the payment given back, rounded down: never more than was granted.
    credits = min(record["credits"] * amount // record["amount"], record["credits"])
    if credits <= 0:
        return _ack(event, "nothing_to_take")
    try:
        result = service.admin.adjust_down(
            record["account"],
            credits,
            note=f"stripe {event['type']}",
            idempotency_key=key,
            key_namespace=PAYMENT_KEYS,
        )
    except IdempotencyKeyReused as error:
        return _unappliable(event, "idempotency_conflict", str(error), account=record["account"])
    except (Conflict, NotFound) as error:
        log.warning("credit-gate: Stripe %s %s not applied: %s", event["type"], event["id"], error)
        return _ack(event, "balance_too_low", account=record["account"], credits=credits)
    outcome = "adjusted" if result.applied else "already_applied"
    return _ack(event, outcome, account=record["account"], credits=-credits)


def _dispute_closed(service: Service, event: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """Won (the customer's bank sided with the merchant): the credits the dispute took come back, once
    (``stripe:dispute_won:<dispute id>``). Lost or a closed warning: the adjustment stands."""
    status = obj.get("status")
    if status != "won":
        return _ack(event, "dispute_not_won", status=status)
    taken = payments.dispute_taken(service.admin.store, obj["id"])
    if taken is None:
        log.warning("credit-gate: Stripe %s %s: the dispute took no credits", event["type"], event["id"])
        return _ack(event, "nothing_taken")
    try:
        result = service.admin.grant(
            taken["account"],
            taken["credits"],
            note=f"stripe {event['type']} won",
            idempotency_key=f"stripe:dispute_won:{obj['id']}",
            key_namespace=PAYMENT_KEYS,
        )
    except IdempotencyKeyReused as error:
        return _unappliable(event, "idempotency_conflict", str(error), account=taken["account"])
    outcome = "given_back" if result.applied else "already_applied"
    return _ack(event, outcome, account=taken["account"], credits=taken["credits"])


HANDLED = frozenset(
    {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "invoice.paid",
        "charge.refunded",
        "refund.created",
        "charge.dispute.created",
        "charge.dispute.closed",
    }
)


def apply_stripe_event(service: Service, event: dict[str, Any]) -> dict[str, Any]:
    settings = settings_of(service)
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in HANDLED:
        log.info("credit-gate: Stripe event %s (%s) acknowledged, not handled", event.get("id"), kind)
        return _ack(event, "ignored")
    obj = _get(event, "data", "object")
    if (
        not isinstance(obj, dict)
        or not isinstance(event.get("id"), str)
        or not isinstance(obj.get("id"), str)
    ):
        return _unappliable(event, "malformed_event", "the event or its object has no id")
    # Stripe Connect: an event of a connected account (``account``) is about that account's customers
    # and money, not the platform's: it applies only when the operator lists the account.
    connected = event.get("account")
    if connected is not None and not (isinstance(connected, str) and connected in settings.connect_accounts):
        log.warning(
            "credit-gate: Stripe %s %s of connected account %r ignored: not in connect_accounts",
            kind,
            event["id"],
            connected,
        )
        return _ack(event, "connect_account_not_mapped", connect_account=connected)
    if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        if obj.get("payment_status") not in ("paid", "no_payment_required"):
            return _ack(event, "not_paid_yet")
        credits = _line_credits(settings, _get(obj, "line_items", "data"))
        price = _get(obj, "metadata", "credit_gate_price")
        if not credits and isinstance(price, str):
            credits = settings.credits.get(price, 0)
        refs = [r for r in (obj.get("payment_intent"), obj.get("invoice")) if isinstance(r, str)]
        payment = {"amount": _whole(obj.get("amount_total")), "refs": refs}
        return _grant_payment(
            service, event, f"stripe:checkout:{obj['id']}", _account(settings, obj), credits, payment
        )
    if kind == "invoice.paid":
        credits = _line_credits(settings, _get(obj, "lines", "data"))
        refs = [
            r for r in (obj.get("payment_intent"), obj.get("charge"), obj.get("id")) if isinstance(r, str)
        ]
        payment = {"amount": _whole(obj.get("amount_paid")), "refs": refs}
        return _grant_payment(
            service, event, f"stripe:invoice:{obj['id']}", _account(settings, obj), credits, payment
        )
    if kind == "charge.refunded":
        refs = [
            r for r in (obj.get("payment_intent"), obj.get("invoice"), obj.get("id")) if isinstance(r, str)
        ]
        listed = _get(obj, "refunds", "data")
        outcomes = [
            _take_back(service, event, f"stripe:refund:{refund['id']}", refs, refund.get("amount"))
            for refund in (listed if isinstance(listed, list) else [])
            if isinstance(refund, dict) and isinstance(refund.get("id"), str)
        ]
        return _ack(event, "refunds", refunds=outcomes)
    if kind == "refund.created":
        refs = [r for r in (obj.get("payment_intent"), obj.get("charge")) if isinstance(r, str)]
        return _take_back(service, event, f"stripe:refund:{obj['id']}", refs, obj.get("amount"))
    if kind == "charge.dispute.created":
        refs = [r for r in (obj.get("payment_intent"), obj.get("charge")) if isinstance(r, str)]
        answer = _take_back(service, event, f"stripe:dispute:{obj['id']}", refs, obj.get("amount"))
        if answer["outcome"] in ("adjusted", "already_applied"):
            # What was taken, for the dispute's close. Written after the adjustment (so it never names
            # credits not taken) and again on a re-sent event (so a crash between the two heals).
            payments.record_dispute(service.admin.store, obj["id"], answer["account"], -answer["credits"])
        return answer
    return _dispute_closed(service, event, obj)  # charge.dispute.closed, the last of HANDLED


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
