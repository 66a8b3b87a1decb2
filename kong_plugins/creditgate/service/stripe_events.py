"""Stripe's events read as payment operations, on plain values: what was paid, what it bought, which ids
name the payment, and which refunds and disputes the event reports. No Redis and no HTTP here: the
webhook (``service/webhooks.py``) routes and applies what this returns.

**One payment, many names.** A Checkout session, its PaymentIntent and its invoice are one payment, and
so are an invoice, the PaymentIntents that paid it and their charges; refunds and disputes name only a
PaymentIntent or a charge. Each event returns every id it knows for its payment (``refs``), most stable
first, so that the ledger can join them. Some events only join ids and pay nothing (a *link*: ``refs``
and no ``pay``): a subscription-mode Checkout session (its first invoice's ``invoice.paid`` is the
payment) and ``invoice_payment.paid`` (since ``2025-03-31.basil`` an invoice no longer names its
PaymentIntent; this event does).

**Credits follow the money.** A payment buys what its lines are worth at the billing map's rates (each
line at the rate of its price, else of its product; a line of an unmapped price buys nothing, a negative
proration line takes its value back), scaled to what was actually paid for them: discounts and the
customer's credit balance lower it, an exclusive tax does not buy credits (the operator's rates are for
the goods; a tax-inclusive price already counts its tax), and overpaying an invoice buys no more than it.
A Checkout session lists no lines in its events, so its ``credit_gate_price`` metadata (a price id)
gives the rate for the whole amount (three packs paid buy three packs' credits). A payment none of whose
prices is mapped is bought at its currency's rate (the map's ``currencies``), if any; a rate in another
currency than the payment's buys nothing. A $0 payment (a trial, a 100% coupon) buys nothing: the plan's
allowance is what a trial gets.

**Shapes by API version.** An event is rendered in its endpoint's API version; only the versions named
in ``SUPPORTED_API_VERSIONS`` are read (the shapes of each are in ``tests/service/stripe_payloads.py``):

- before ``2025-03-31.basil``: an invoice names ``payment_intent`` and ``charge``, and each line its
  ``price`` (a Price object);
- since ``2025-03-31.basil``: neither; an invoice may list its ``payments`` (InvoicePayments, each with
  ``payment.payment_intent`` or ``payment.charge``; events usually leave the list out), each line names
  ``pricing.price_details.price`` (an id, or the Price when expanded, since ``2025-12-15.clover``) and
  ``.product``, and the subscription's metadata is at ``parent.subscription_details.metadata``;
- since ``2022-11-15``: a charge no longer lists its ``refunds`` unless expanded, and events never expand:
  ``charge.refunded`` then gives only ``amount_refunded``, the charge's refunded total as of the event.

An event this module cannot read returns an ``outcome`` (``error=True`` when it can never apply:
``unsupported_api_version``, ``malformed_event``, ``no_mapped_price``, ``currency_not_mapped``); it
never raises, whatever JSON it is given.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from creditgate.core.model import MAX_CREDITS, MAX_INSTANT
from creditgate.core.payments import (
    DISPUTE,
    MAX_AMOUNT,
    RANK,
    REFUND,
    REFUND_ENDED,
    REFUNDED_TOTAL,
    Rate,
    Reversal,
    credits_for_lines,
)
from creditgate.service.billing_map import WebhookSettings, account_of, field_at

PRICE_METADATA_KEY = "credit_gate_price"  # a Checkout session's price id, which gives its rate

# Every API version whose shapes this module reads (Stripe's changelog and the stripe package's types):
# the monthly releases from 2022-11-15 (a charge's refunds no longer listed) to the newest found.
SUPPORTED_API_VERSIONS: frozenset[str] = frozenset(
    {
        # Before Basil: an invoice names its payment_intent and charge, a line its price.
        "2022-11-15",
        "2023-08-16",
        "2023-10-16",
        "2024-04-10",
        "2024-06-20",
        "2024-09-30.acacia",
        "2024-10-28.acacia",
        "2024-11-20.acacia",
        "2024-12-18.acacia",
        "2025-01-27.acacia",
        "2025-02-24.acacia",
        # Basil and after: invoice payments, line pricing, invoice parent.
        "2025-03-31.basil",
        "2025-04-30.basil",
        "2025-05-28.basil",
        "2025-06-30.basil",
        "2025-07-30.basil",
        "2025-08-27.basil",
        "2025-09-30.clover",
        "2025-10-29.clover",
        "2025-11-17.clover",
        "2025-12-15.clover",
        "2026-01-28.clover",
        "2026-02-25.clover",
        "2026-03-25.dahlia",
        "2026-04-22.dahlia",
        "2026-05-27.dahlia",
        "2026-06-24.dahlia",
        "2026-07-29.dahlia",
        "2026-08-26.dahlia",
        "2026-09-30.endive",
        "2026-10-28.endive",
        "2026-11-18.endive",
    }
)

CHECKOUT_PAID = frozenset({"checkout.session.completed", "checkout.session.async_payment_succeeded"})
REFUND_EVENTS = frozenset({"refund.created", "refund.updated", "refund.failed", "charge.refund.updated"})
DISPUTE_EVENTS = frozenset(
    {
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
    }
)
PAYMENT_EVENT_TYPES: frozenset[str] = frozenset(
    {
        *CHECKOUT_PAID,
        "invoice.paid",
        "invoice_payment.paid",
        "charge.refunded",
        *REFUND_EVENTS,
        *DISPUTE_EVENTS,
    }
)

# Stripe's ids are at most 255 characters (its API upgrade notes); printable ASCII, no spaces.
_ID = re.compile(r"[\x21-\x7e]{1,255}")
_CURRENCY = re.compile(r"[a-z]{3}")


@dataclass(frozen=True)
class PaymentEvent:
    """What one Stripe event says about one payment."""

    refs: tuple[str, ...]  # every id naming the payment (cs_, in_, pi_, ch_), most stable first
    account: str | None = None  # the account the payment is for (payment events only)
    pay: tuple[int, str, int] | None = None  # (amount paid, currency, credits bought) for a payment event
    reversals: tuple[Reversal, ...] = ()  # refunds / disputes / refunded_total in the event
    outcome: str | None = None  # set when nothing is to be applied: the ack outcome (e.g. "not_paid_yet",
    why: str = ""  #   "nothing_paid", "no_mapped_price", "unsupported_api_version", "malformed_event")
    error: bool = False  # outcome is an unappliable one (error log + metric) vs a normal no-op


class _Unappliable(Exception):
    """An event (or a part of it) that can never apply: read_payment_event turns it into its outcome."""

    def __init__(self, outcome: str, why: str) -> None:
        super().__init__(why)
        self.outcome, self.why = outcome, why


def _malformed(why: str) -> _Unappliable:
    return _Unappliable("malformed_event", why)


def _id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise _malformed(f"{what} is not a Stripe id")
    return value


def _ref(value: Any, what: str) -> str | None:
    """An id another object names: absent (None), an id, or the object itself when expanded."""
    if isinstance(value, dict):
        value = value.get("id")
    return None if value is None else _id(value, what)


def _refs(*values: str | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(value for value in values if value is not None))


def _amount(value: Any, what: str, *, low: int = 1) -> int:
    """Money in the currency's smallest unit: a whole number (never a float, never a bool), bounded."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_AMOUNT:
        raise _malformed(f"{what} is not a whole amount from {low} to {MAX_AMOUNT}: {value!r}")
    return value


def _currency(value: Any) -> str:
    code = value.lower() if isinstance(value, str) else None
    if code is None or not _CURRENCY.fullmatch(code):
        raise _malformed(f"the currency is not an ISO code: {value!r}")
    return code


def _instant(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INSTANT:
        raise _malformed(f"{what} is not a Unix time: {value!r}")
    return value


def _listed(value: Any, what: str) -> list[Any]:
    """The ``data`` of a Stripe list object, or [] when the event leaves the list out."""
    if value is None:
        return []
    data = field_at(value, "data")
    if not isinstance(data, list):
        raise _malformed(f"{what} is not a list object")
    return data


def _rate_of(settings: WebhookSettings, *keys: Any) -> Rate | None:
    """The rate of the first key (a price id, then a product id) the billing map names."""
    for key in keys:
        if isinstance(key, dict):
            key = key.get("id")
        if isinstance(key, str) and key in settings.credits:
            return settings.credits[key]
    return None


def _same_currency(rate: Rate, currency: str) -> None:
    if rate.currency != currency:
        raise _Unappliable(
            "currency_not_mapped",
            f"the payment is in {currency} and the billing map's rate is in {rate.currency}",
        )


def _credits(
    lines: list[tuple[int, Rate | None]], paid_for_goods: int, currency: str, fallback: Rate | None
) -> int:
    """Credits the goods' payment buys: its lines at their rates, else the fallback rate for all of it."""
    mapped = [rate for _, rate in lines if rate is not None]
    if mapped:
        for rate in mapped:
            _same_currency(rate, currency)
        credits = credits_for_lines(lines, paid_for_goods)
    elif fallback is not None:
        _same_currency(fallback, currency)
        credits = fallback.credits_for(paid_for_goods)
    else:
        raise _Unappliable("no_mapped_price", "no price, product or currency of it is in the billing map")
    if credits <= 0:
        raise _Unappliable("no_mapped_price", "money was paid and it maps to no credits")
    if credits > MAX_CREDITS:
        raise _Unappliable("no_mapped_price", f"it maps to more than {MAX_CREDITS} credits")
    return credits


def _payment(
    refs: tuple[str, ...], account: str | None, paid: int, currency: str, credits_of: Callable[[], int]
) -> PaymentEvent:
    """A paid payment, or the outcome saying why its credits cannot be known (with its refs and account,
    for the log)."""
    try:
        credits = credits_of()
    except _Unappliable as problem:
        return PaymentEvent(refs, account, outcome=problem.outcome, why=problem.why, error=True)
    return PaymentEvent(refs, account, pay=(paid, currency, credits))


def _checkout(settings: WebhookSettings, obj: dict[str, Any]) -> PaymentEvent:
    session = _id(obj.get("id"), "the session id")
    account = account_of(settings, obj)
    mode = obj.get("mode")
    if mode == "subscription":
        # The subscription's first invoice is the payment (invoice.paid, a trial's $0 one too): the
        # session only joins its id to that invoice's.
        invoice = _ref(obj.get("invoice"), "the session's invoice")
        if invoice is None:
            why = "a subscription's Checkout session pays through its invoices"
            return PaymentEvent((session,), account, outcome="nothing_paid", why=why)
        if obj.get("payment_status") == "no_payment_required" or obj.get("amount_total") == 0:
            why = "a trial's session takes no money (the plan's allowance applies)"
            return PaymentEvent((session, invoice), account, outcome="nothing_paid", why=why)
        return PaymentEvent((session, invoice), account)
    if mode == "setup":
        return PaymentEvent((session,), account, outcome="nothing_paid", why="a setup session takes no money")
    if mode != "payment":
        raise _malformed(f"the session's mode is {mode!r}")
    refs = _refs(
        session,
        _ref(obj.get("payment_intent"), "the session's payment_intent"),
        _ref(obj.get("invoice"), "the session's invoice"),
    )
    status = obj.get("payment_status")
    if status == "unpaid":  # a delayed method: checkout.session.async_payment_succeeded pays it
        return PaymentEvent(refs, account, outcome="not_paid_yet", why="the payment has not succeeded yet")
    if status == "no_payment_required":
        return PaymentEvent(refs, account, outcome="nothing_paid", why="the session required no payment")
    if status != "paid":
        raise _malformed(f"the session's payment_status is {status!r}")
    paid = _amount(obj.get("amount_total"), "the session's amount_total", low=0)
    currency = _currency(obj.get("currency"))
    if paid == 0:
        return PaymentEvent(refs, account, outcome="nothing_paid", why="the session was paid $0")
    # What paid for the goods: the subtotal less discounts, which leaves out an exclusive tax and
    # shipping (a tax-inclusive price keeps its tax in the subtotal).
    goods = paid
    subtotal = obj.get("amount_subtotal")
    if subtotal is not None:
        discount = field_at(obj, "total_details", "amount_discount")
        discounted = _amount(subtotal, "amount_subtotal", low=0) - (
            0 if discount is None else _amount(discount, "amount_discount", low=0)
        )
        goods = max(min(paid, discounted), 0)

    def credits() -> int:
        lines = [
            (
                _amount(field_at(line, "amount_subtotal"), "a line's amount_subtotal", low=0),
                _rate_of(settings, field_at(line, "price", "id"), field_at(line, "price", "product")),
            )
            for line in _listed(obj.get("line_items"), "the session's line_items")
        ]
        price = field_at(obj, "metadata", PRICE_METADATA_KEY)
        fallback = _rate_of(settings, price) or settings.currencies.get(currency)
        return _credits(lines, goods, currency, fallback)

    return _payment(refs, account, paid, currency, credits)


def _invoice_line(settings: WebhookSettings, line: Any) -> tuple[int, Rate | None]:
    """A line's amount (negative for a proration's credit) and its price's rate, in either shape."""
    if not isinstance(line, dict):
        raise _malformed("an invoice line is not an object")
    amount = _amount(line.get("amount"), "a line's amount", low=-MAX_AMOUNT)
    details = field_at(line, "pricing", "price_details")
    if isinstance(details, dict):  # since 2025-03-31.basil
        return amount, _rate_of(settings, details.get("price"), details.get("product"))
    price = line.get("price") or line.get("plan")  # before: the Price (or, older still, the Plan)
    return amount, _rate_of(settings, price, field_at(price, "product"))


def _exclusive_tax(obj: dict[str, Any]) -> int:
    """Tax added on top of an invoice's lines: ``total_taxes`` (since basil) or ``total_tax_amounts``."""
    tax = 0
    for entry in _plain_list(obj.get("total_taxes"), "total_taxes"):
        if field_at(entry, "tax_behavior") == "exclusive":
            tax += _amount(field_at(entry, "amount"), "a tax amount", low=0)
    for entry in _plain_list(obj.get("total_tax_amounts"), "total_tax_amounts"):
        if field_at(entry, "inclusive") is False:
            tax += _amount(field_at(entry, "amount"), "a tax amount", low=0)
    return tax


def _plain_list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _malformed(f"{what} is not a list")
    return value


def _invoice_paid(settings: WebhookSettings, obj: dict[str, Any]) -> PaymentEvent:
    invoice = _id(obj.get("id"), "the invoice id")
    paid_by: list[str | None] = []
    for payment in _listed(obj.get("payments"), "the invoice's payments"):  # since basil, when listed
        paid_by += [
            _ref(field_at(payment, "payment", "payment_intent"), "an invoice payment's payment_intent"),
            _ref(field_at(payment, "payment", "charge"), "an invoice payment's charge"),
        ]
    refs = _refs(
        invoice,
        _ref(obj.get("payment_intent"), "the invoice's payment_intent"),  # before basil
        _ref(obj.get("charge"), "the invoice's charge"),
        *paid_by,
    )
    account = account_of(settings, obj)
    paid = _amount(obj.get("amount_paid"), "the invoice's amount_paid", low=0)
    currency = _currency(obj.get("currency"))
    if paid == 0:
        return PaymentEvent(refs, account, outcome="nothing_paid", why="the invoice was paid $0")
    lines_list = obj.get("lines")
    if not isinstance(lines_list, dict):
        raise _malformed("the invoice has no lines")
    lines = [_invoice_line(settings, line) for line in _listed(lines_list, "the invoice's lines")]
    if lines_list.get("has_more") is True:
        # The event lists only the first lines: the rest count in the total and, unseen, buy nothing
        # (never a credit not paid for; the operator sees the shortfall in the log of the grant).
        subtotal = obj.get("subtotal")
        seen = sum(amount for amount, _ in lines)
        if isinstance(subtotal, int) and not isinstance(subtotal, bool) and subtotal > seen:
            lines.append((subtotal - seen, None))
    # What paid for the goods: the exclusive tax's share of the payment buys nothing, and an overpaid
    # invoice buys no more than its total.
    goods = paid
    total = obj.get("total")
    if isinstance(total, int) and not isinstance(total, bool) and total > 0:
        tax = _exclusive_tax(obj)
        goods = min(paid, total) * max(total - tax, 0) // total

    def credits() -> int:
        return _credits(lines, goods, currency, settings.currencies.get(currency))

    return _payment(refs, account, paid, currency, credits)


def _invoice_payment_paid(obj: dict[str, Any]) -> PaymentEvent:
    """Since basil: the event that joins an invoice to the PaymentIntent (or charge) that paid it."""
    _id(obj.get("id"), "the invoice payment id")
    invoice = _ref(obj.get("invoice"), "the invoice payment's invoice")
    if invoice is None:
        raise _malformed("the invoice payment names no invoice")
    paid_by = _refs(
        _ref(field_at(obj, "payment", "payment_intent"), "the invoice payment's payment_intent"),
        _ref(field_at(obj, "payment", "charge"), "the invoice payment's charge"),
    )
    if not paid_by:  # a payment record (paid outside Stripe): no refund or dispute will name it
        why = "the invoice was paid by no PaymentIntent or charge"
        return PaymentEvent((invoice,), outcome="nothing_to_link", why=why)
    return PaymentEvent((invoice, *paid_by))


def _paid_refs(obj: dict[str, Any], what: str) -> tuple[str, ...]:
    """The payment a refund or dispute is of: its PaymentIntent, then its charge."""
    refs = _refs(
        _ref(obj.get("payment_intent"), f"the {what}'s payment_intent"),
        _ref(obj.get("charge"), f"the {what}'s charge"),
    )
    if not refs:
        raise _malformed(f"the {what} names no PaymentIntent or charge")
    return refs


def _reversal(obj: Any, kind: str, what: str, event_at: int, at: int | None = None) -> Reversal:
    """A refund (``at`` its creation; a failed or canceled one ``ended`` at its event's time) or a dispute
    (``at`` the event's: a dispute's statuses are ordered by when Stripe changed them, since an appeal
    goes from ``lost`` back to ``won``)."""
    if not isinstance(obj, dict):
        raise _malformed(f"a {what} is not an object")
    status = obj.get("status")
    if not isinstance(status, str) or status not in RANK[kind]:
        raise _malformed(f"the {what}'s status is {status!r}")
    _currency(obj.get("currency"))
    return Reversal(
        id=_id(obj.get("id"), f"the {what} id"),
        kind=kind,
        amount=_amount(obj.get("amount"), f"the {what}'s amount"),
        status=status,
        at=at if at is not None else _instant(obj.get("created"), f"the {what}'s created"),
        ended=event_at if kind == REFUND and status in REFUND_ENDED else 0,
    )


def _charge_refunded(event: dict[str, Any], obj: dict[str, Any]) -> PaymentEvent:
    charge = _id(obj.get("id"), "the charge id")
    refs = _refs(_ref(obj.get("payment_intent"), "the charge's payment_intent"), charge)
    _currency(obj.get("currency"))
    listing = obj.get("refunds")
    at = _instant(event.get("created"), "the event's created")
    listed = _listed(listing, "the charge's refunds")
    reversals = [_reversal(refund, REFUND, "refund", at) for refund in listed]
    if listing is None or field_at(listing, "has_more") is not False:
        # The refunds are not listed (since 2022-11-15), or not all of them: the refunded total, as of
        # this event, stands for those not known one by one.
        total = _amount(obj.get("amount_refunded"), "the charge's amount_refunded")
        reversals.append(Reversal(id=REFUNDED_TOTAL, kind=REFUNDED_TOTAL, amount=total, status="", at=at))
    return PaymentEvent(refs, reversals=tuple(reversals))


def _read(settings: WebhookSettings, event: Any) -> PaymentEvent:
    if not isinstance(event, dict):
        raise _malformed("the event is not an object")
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in PAYMENT_EVENT_TYPES:
        return PaymentEvent((), outcome="ignored", why=f"{kind!r} is not a payment event")
    version = event.get("api_version")
    if not isinstance(version, str) or version not in SUPPORTED_API_VERSIONS:
        raise _Unappliable("unsupported_api_version", f"events of API version {version!r} are not read")
    _id(event.get("id"), "the event id")
    obj = field_at(event, "data", "object")
    if not isinstance(obj, dict):
        raise _malformed("the event has no data.object")
    if kind in CHECKOUT_PAID:
        return _checkout(settings, obj)
    if kind == "invoice.paid":
        return _invoice_paid(settings, obj)
    if kind == "invoice_payment.paid":
        return _invoice_payment_paid(obj)
    if kind == "charge.refunded":
        return _charge_refunded(event, obj)
    at = _instant(event.get("created"), "the event's created")
    if kind in REFUND_EVENTS:
        return PaymentEvent(_paid_refs(obj, "refund"), reversals=(_reversal(obj, REFUND, "refund", at),))
    return PaymentEvent(_paid_refs(obj, "dispute"), reversals=(_reversal(obj, DISPUTE, "dispute", at, at),))


def read_payment_event(settings: WebhookSettings, event: dict[str, Any]) -> PaymentEvent:
    """The payment operation a Stripe event stands for, or the outcome saying why it has none."""
    try:
        return _read(settings, event)
    except _Unappliable as problem:
        return PaymentEvent((), outcome=problem.outcome, why=problem.why, error=True)


__all__ = [
    "PAYMENT_EVENT_TYPES",
    "PRICE_METADATA_KEY",
    "SUPPORTED_API_VERSIONS",
    "PaymentEvent",
    "read_payment_event",
]
