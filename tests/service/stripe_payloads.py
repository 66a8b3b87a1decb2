"""Stripe events as Stripe sends them, per API version: builders of whole event payloads (``id``,
``type``, ``api_version``, ``created``, ``data.object``) in each version's documented object shapes, for
the parser's tests and for sending real signed events to the service.

The shapes (Stripe's API reference and changelog, and the stripe package's generated types):

- **Checkout Session** (``checkout.session``): ``mode`` payment / subscription / setup,
  ``payment_status`` paid / unpaid / no_payment_required, ``amount_subtotal``, ``amount_total``,
  ``total_details``, ``currency``, ``payment_intent`` (payment mode), ``invoice`` and ``subscription``
  (subscription mode, or payment mode with invoice creation), ``metadata``; ``line_items`` only when
  expanded, which events never are. ``shipping_details`` until basil; ``ui_mode`` ``hosted`` became
  ``hosted_page`` in dahlia.
- **Invoice**, before ``2025-03-31.basil``: ``payment_intent``, ``charge``, ``paid``, ``subscription``,
  ``subscription_details.metadata``, ``total_tax_amounts`` (``inclusive``), each line's ``price`` (a
  Price) and ``proration``. Since basil: none of those; ``parent.subscription_details``, ``total_taxes``
  (``tax_behavior``), ``payments`` (InvoicePayments, when listed), each line's
  ``pricing.price_details.{price, product}`` and ``parent.subscription_item_details.proration``; lists
  have no ``total_count``.
- **InvoicePayment** (since basil; event ``invoice_payment.paid``): ``invoice``, ``payment.type`` and
  ``payment.payment_intent`` (or ``payment.charge``), ``amount_paid``, ``status`` paid.
- **Charge**: ``amount``, ``amount_refunded``, ``refunded``, ``payment_intent``; ``refunds`` is not
  included since 2022-11-15 (``expanded=True`` builds the older, listed shape); ``invoice`` until basil.
- **Refund**: ``status`` pending / requires_action / succeeded / failed / canceled, ``amount``,
  ``created``, ``charge``, ``payment_intent``, ``currency``.
- **Dispute**: ``status`` warning_needs_response / warning_under_review / warning_closed /
  needs_response / under_review / won / lost / prevented, ``amount``, ``charge``, ``payment_intent``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

BASIL = "2025-03-31.basil"
LATEST = "2026-11-18.endive"
CREATED = 1_767_225_600  # 2026-01-01T00:00:00Z
# One version per family of shapes and per named release: what the parser's tests run against.
PRE_BASIL_VERSIONS = ("2022-11-15", "2024-06-20", "2024-09-30.acacia", "2025-02-24.acacia")
BASIL_VERSIONS = (
    BASIL,
    "2025-08-27.basil",
    "2025-09-30.clover",
    "2025-12-15.clover",
    "2026-03-25.dahlia",
    "2026-09-30.endive",
    LATEST,
)
VERSIONS = PRE_BASIL_VERSIONS + BASIL_VERSIONS
ACCOUNT_KEY = "credit_gate_account"


def is_basil(version: str) -> bool:
    """Since 2025-03-31.basil: invoices without payment_intent, charge and price (the dated part compares
    as text)."""
    return version[:10] >= BASIL[:10]


def event(
    event_type: str,
    obj: dict[str, Any],
    version: str = LATEST,
    *,
    event_id: str | None = None,
    created: int = CREATED,
    previous_attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A snapshot event around ``obj``. Its id, unless given, is made from its content: the same event
    re-sent has the same id, two different ones never share one."""
    data: dict[str, Any] = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    if event_id is None:
        digest = hashlib.sha256(json.dumps([event_type, version, created, obj], sort_keys=True).encode())
        event_id = "evt_" + digest.hexdigest()[:24]
    return {
        "id": event_id,
        "object": "event",
        "api_version": version,
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def _list(data: Sequence[dict[str, Any]], url: str, version: str, has_more: bool = False) -> dict[str, Any]:
    listing: dict[str, Any] = {"object": "list", "data": list(data), "has_more": has_more, "url": url}
    if not is_basil(version):
        listing["total_count"] = len(data)  # removed from list objects in basil
    return listing


@dataclass(frozen=True)
class Line:
    """One invoice (or expanded Checkout) line: its amount (negative for a proration's credit), its price
    and product."""

    amount: int
    price: str = "price_credits"
    product: str = "prod_credits"
    quantity: int = 1
    proration: bool = False


def checkout_session(
    version: str = LATEST,
    *,
    event_type: str = "checkout.session.completed",
    session: str = "cs_test_1",
    mode: str = "payment",
    payment_status: str = "paid",
    amount_total: int = 2000,
    amount_subtotal: int | None = None,
    amount_discount: int = 0,
    amount_tax: int = 0,
    currency: str = "usd",
    payment_intent: str | None = "pi_1",
    invoice: str | None = None,
    customer: str | None = "cus_1",
    account: str | None = "acme",
    price: str | None = None,
    line_items: Sequence[Line] | None = None,
    event_id: str | None = None,
    created: int = CREATED,
) -> dict[str, Any]:
    """A Checkout session event. ``price`` puts the ``credit_gate_price`` metadata; ``amount_tax`` is an
    exclusive tax (in ``amount_total``, not in ``amount_subtotal``). A subscription-mode session has no
    PaymentIntent and names its first invoice (``in_1`` unless given) and its subscription."""
    metadata: dict[str, str] = {}
    if account is not None:
        metadata[ACCOUNT_KEY] = account
    if price is not None:
        metadata["credit_gate_price"] = price
    subscription = None
    if mode == "subscription":
        payment_intent, invoice, subscription = None, invoice or "in_1", "sub_1"
    elif mode == "setup":
        payment_intent = None
    if amount_subtotal is None:
        amount_subtotal = amount_total - amount_tax + amount_discount
    obj: dict[str, Any] = {
        "id": session,
        "object": "checkout.session",
        "amount_subtotal": amount_subtotal,
        "amount_total": amount_total,
        "automatic_tax": {"enabled": amount_tax > 0, "liability": None, "status": None},
        "cancel_url": None,
        "client_reference_id": None,
        "created": created - 60,
        "currency": currency,
        "customer": customer,
        "customer_details": {"email": "buyer@example.com", "tax_exempt": "none", "tax_ids": []},
        "expires_at": created + 86_340,
        "invoice": invoice,
        "livemode": False,
        "metadata": metadata,
        "mode": mode,
        "payment_intent": payment_intent,
        "payment_status": payment_status,
        "status": "complete",
        "subscription": subscription,
        "success_url": "https://example.com/thanks",
        "total_details": {"amount_discount": amount_discount, "amount_shipping": 0, "amount_tax": amount_tax},
        "ui_mode": "hosted_page" if version[:10] >= "2026-03-25" else "hosted",
        "url": None,
    }
    if not is_basil(version):
        obj["shipping_details"] = None  # removed in basil
    if line_items is not None:  # only when the session is retrieved with expand[]=line_items
        items = [
            {
                "id": f"li_{n}",
                "object": "item",
                "amount_discount": 0,
                "amount_subtotal": line.amount,
                "amount_tax": 0,
                "amount_total": line.amount,
                "currency": currency,
                "description": "Credits",
                "price": _price(line, currency),
                "quantity": line.quantity,
            }
            for n, line in enumerate(line_items, 1)
        ]
        obj["line_items"] = _list(items, f"/v1/checkout/sessions/{session}/line_items", version)
    return event(event_type, obj, version, event_id=event_id, created=created)


def _price(line: Line, currency: str) -> dict[str, Any]:
    return {
        "id": line.price,
        "object": "price",
        "active": True,
        "currency": currency,
        "product": line.product,
        "type": "recurring",
        "unit_amount": abs(line.amount) // max(line.quantity, 1),
    }


def invoice_line(version: str, line: Line, n: int, *, invoice: str, currency: str) -> dict[str, Any]:
    """One invoice line in the version's shape."""
    obj: dict[str, Any] = {
        "id": f"il_{n}",
        "object": "line_item",
        "amount": line.amount,
        "currency": currency,
        "description": "Credits",
        "discount_amounts": [],
        "discountable": not line.proration,
        "discounts": [],
        "invoice": invoice,
        "livemode": False,
        "metadata": {},
        "period": {"end": CREATED + 2_592_000, "start": CREATED},
        "quantity": line.quantity,
    }
    if is_basil(version):
        obj["parent"] = {
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": line.proration,
                "proration_details": {"credited_items": None},
                "subscription": "sub_1",
                "subscription_item": f"si_{n}",
            },
        }
        obj["pricing"] = {
            "type": "price_details",
            "price_details": {"price": line.price, "product": line.product},
            "unit_amount_decimal": str(abs(line.amount) // max(line.quantity, 1)),
        }
        obj["pretax_credit_amounts"] = []
        obj["taxes"] = []
    else:
        obj.update(
            {
                "amount_excluding_tax": line.amount,
                "plan": None,
                "price": _price(line, currency),
                "proration": line.proration,
                "proration_details": {"credited_items": None},
                "subscription": "sub_1",
                "subscription_item": f"si_{n}",
                "tax_amounts": [],
                "tax_rates": [],
                "type": "subscription",
            }
        )
    return obj


def invoice_payment(
    *,
    invoice: str = "in_1",
    payment_intent: str | None = "pi_1",
    charge: str | None = None,
    amount: int = 2000,
    currency: str = "usd",
    payment: str = "inpay_1",
    status: str = "paid",
) -> dict[str, Any]:
    """An InvoicePayment (since basil): the invoice, and the PaymentIntent or charge that paid it."""
    kind = "payment_intent" if payment_intent is not None else "charge"
    return {
        "id": payment,
        "object": "invoice_payment",
        "amount_paid": amount if status == "paid" else None,
        "amount_requested": amount,
        "created": CREATED,
        "currency": currency,
        "invoice": invoice,
        "is_default": True,
        "livemode": False,
        "payment": {"type": kind, "payment_intent": payment_intent, "charge": charge},
        "status": status,
        "status_transitions": {"canceled_at": None, "paid_at": CREATED if status == "paid" else None},
    }


def invoice_paid(
    version: str = LATEST,
    lines: Sequence[Line] = (Line(2000),),
    amount_paid: int | None = None,
    *,
    invoice: str = "in_1",
    currency: str = "usd",
    payment_intent: str | None = "pi_1",
    charge: str | None = "ch_1",
    customer: str | None = "cus_1",
    account: str | None = "acme",
    tax: int = 0,
    inclusive_tax: int = 0,
    discount: int = 0,
    has_more: bool = False,
    payments: Iterable[dict[str, Any]] | None = None,
    billing_reason: str = "subscription_cycle",
    event_type: str = "invoice.paid",
    event_id: str | None = None,
    created: int = CREATED,
) -> dict[str, Any]:
    """An invoice event. ``amount_paid`` defaults to the total (lines - ``discount`` + ``tax``, an
    exclusive tax); ``inclusive_tax`` is reported and already in the lines. ``account`` is the
    subscription's metadata. Before basil the invoice names ``payment_intent`` and ``charge``; since, it
    names neither and lists ``payments`` only when given (see invoice_payment)."""
    subtotal = sum(line.amount for line in lines)
    total = subtotal - discount + tax
    paid = total if amount_paid is None else amount_paid
    metadata = {ACCOUNT_KEY: account} if account is not None else {}
    listed = [
        invoice_line(version, line, n, invoice=invoice, currency=currency) for n, line in enumerate(lines)
    ]
    obj: dict[str, Any] = {
        "id": invoice,
        "object": "invoice",
        "account_country": "US",
        "amount_due": max(total, 0),
        "amount_paid": paid,
        "amount_remaining": max(total - paid, 0),
        "attempt_count": 1,
        "attempted": True,
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "created": created - 3600,
        "currency": currency,
        "customer": customer,
        "discounts": [],
        "lines": _list(listed, f"/v1/invoices/{invoice}/lines", version, has_more),
        "livemode": False,
        "metadata": {},
        "status": "paid",
        "status_transitions": {"finalized_at": created - 3600, "paid_at": created},
        "subtotal": subtotal,
        "subtotal_excluding_tax": subtotal - inclusive_tax,
        "total": total,
        "total_discount_amounts": [{"amount": discount, "discount": "di_1"}] if discount else [],
        "total_excluding_tax": total - tax - inclusive_tax,
    }
    taxes = [(tax, False), (inclusive_tax, True)]
    if is_basil(version):
        obj["parent"] = {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": metadata, "subscription": "sub_1"},
        }
        obj["total_taxes"] = [
            {
                "amount": amount,
                "tax_behavior": "inclusive" if inclusive else "exclusive",
                "tax_rate_details": {"tax_rate": "txr_1"},
                "taxability_reason": "standard_rated",
                "taxable_amount": subtotal,
                "type": "tax_rate_details",
            }
            for amount, inclusive in taxes
            if amount
        ]
        if payments is not None:
            obj["payments"] = _list(list(payments), "/v1/invoice_payments", version)
    else:
        obj.update(
            {
                "charge": charge,
                "paid": True,
                "paid_out_of_band": False,
                "payment_intent": payment_intent,
                "subscription": "sub_1",
                "subscription_details": {"metadata": metadata},
                "tax": tax or None,
                "total_tax_amounts": [
                    {"amount": amount, "inclusive": inclusive, "tax_rate": "txr_1"}
                    for amount, inclusive in taxes
                    if amount
                ],
            }
        )
    return event(event_type, obj, version, event_id=event_id, created=created)


def invoice_payment_paid(
    version: str = LATEST,
    *,
    invoice: str = "in_1",
    payment_intent: str | None = "pi_1",
    charge: str | None = None,
    amount: int = 2000,
    currency: str = "usd",
    payment: str = "inpay_1",
    event_id: str | None = None,
    created: int = CREATED,
) -> dict[str, Any]:
    """``invoice_payment.paid`` (basil and after): joins an invoice to the PaymentIntent that paid it."""
    assert is_basil(version), "invoice_payment.paid exists since 2025-03-31.basil"
    obj = invoice_payment(
        invoice=invoice,
        payment_intent=payment_intent,
        charge=charge,
        amount=amount,
        currency=currency,
        payment=payment,
    )
    return event("invoice_payment.paid", obj, version, event_id=event_id, created=created)


def refund(
    *,
    refund_id: str = "re_1",
    status: str = "succeeded",
    amount: int = 500,
    charge: str | None = "ch_1",
    payment_intent: str | None = "pi_1",
    currency: str = "usd",
    created: int = CREATED,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "balance_transaction": "txn_1",
        "charge": charge,
        "created": created,
        "currency": currency,
        "destination_details": {"type": "card", "card": {"type": "refund"}},
        "metadata": {},
        "payment_intent": payment_intent,
        "reason": "requested_by_customer",
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": status,
        "transfer_reversal": None,
    }
    if status == "failed":
        obj["failure_reason"] = "expired_or_canceled_card"
    return obj


def charge_refunded(
    version: str = LATEST,
    expanded: bool = False,
    *,
    refunds: Sequence[dict[str, Any]] | None = None,
    amount: int = 2000,
    amount_refunded: int | None = None,
    charge: str = "ch_1",
    payment_intent: str | None = "pi_1",
    currency: str = "usd",
    has_more: bool = False,
    event_id: str | None = None,
    created: int = CREATED,
) -> dict[str, Any]:
    """``charge.refunded``. ``refunds`` (see refund) default to one succeeded refund of 500;
    ``amount_refunded`` defaults to the refunds in effect. ``expanded`` lists them on the charge, as
    before 2022-11-15; otherwise only the total tells."""
    refunds = [refund(charge=charge, payment_intent=payment_intent)] if refunds is None else list(refunds)
    if amount_refunded is None:
        in_effect = ("pending", "requires_action", "succeeded")
        amount_refunded = sum(r["amount"] for r in refunds if r["status"] in in_effect)
    obj: dict[str, Any] = {
        "id": charge,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount_refunded,
        "balance_transaction": "txn_ch",
        "captured": True,
        "created": created - 86_400,
        "currency": currency,
        "customer": "cus_1",
        "disputed": False,
        "livemode": False,
        "metadata": {},
        "paid": True,
        "payment_intent": payment_intent,
        "refunded": amount_refunded >= amount,
        "status": "succeeded",
    }
    if not is_basil(version):
        obj["invoice"] = None  # removed from charges in basil
    if expanded:
        obj["refunds"] = _list(refunds, f"/v1/charges/{charge}/refunds", version, has_more)
    return event("charge.refunded", obj, version, event_id=event_id, created=created)


def refund_event(
    event_type: str = "refund.created",
    status: str = "succeeded",
    *,
    version: str = LATEST,
    refund_id: str = "re_1",
    amount: int = 500,
    charge: str | None = "ch_1",
    payment_intent: str | None = "pi_1",
    currency: str = "usd",
    refund_created: int = CREATED,
    event_id: str | None = None,
    created: int = CREATED,
) -> dict[str, Any]:
    """``refund.created`` / ``refund.updated`` / ``refund.failed`` / ``charge.refund.updated``: a Refund."""
    obj = refund(
        refund_id=refund_id,
        status=status,
        amount=amount,
        charge=charge,
        payment_intent=payment_intent,
        currency=currency,
        created=refund_created,
    )
    return event(event_type, obj, version, event_id=event_id, created=created)


def dispute_event(
    event_type: str = "charge.dispute.created",
    status: str = "needs_response",
    *,
    version: str = LATEST,
    dispute: str = "dp_1",
    amount: int = 2000,
    charge: str = "ch_1",
    payment_intent: str | None = "pi_1",
    currency: str = "usd",
    reason: str = "fraudulent",
    event_id: str | None = None,
    created: int = CREATED,
) -> dict[str, Any]:
    """``charge.dispute.created`` / ``.updated`` / ``.closed`` / ``.funds_withdrawn`` /
    ``.funds_reinstated``: a Dispute."""
    obj = {
        "id": dispute,
        "object": "dispute",
        "amount": amount,
        "balance_transactions": [],
        "charge": charge,
        "created": CREATED,
        "currency": currency,
        "evidence": {},
        "evidence_details": {"due_by": CREATED + 604_800, "has_evidence": False, "past_due": False},
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": payment_intent,
        "reason": reason,
        "status": status,
    }
    return event(event_type, obj, version, event_id=event_id, created=created)
