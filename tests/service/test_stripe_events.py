"""Stripe events read as payment operations, on plain values: every event type the payments ledger
handles, in the documented shape of each API version (tests/service/stripe_payloads.py), becomes the
ids of its payment, what was paid and bought, and the refunds and disputes it reports, or an outcome
saying why it applies nothing. Whatever JSON comes in, the parser answers and never raises.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creditgate.core.model import MAX_CREDITS
from creditgate.core.payments import (
    DISPUTE,
    MAX_AMOUNT,
    RANK,
    REFUND,
    REFUND_ENDED,
    REFUNDED_TOTAL,
    Rate,
    Reversal,
)
from creditgate.service.billing_map import WebhookSettings
from creditgate.service.stripe_events import (
    PAYMENT_EVENT_TYPES,
    SUPPORTED_API_VERSIONS,
    PaymentEvent,
    read_payment_event,
)
from tests.service.stripe_payloads import (
    BASIL,
    BASIL_VERSIONS,
    CREATED,
    LATEST,
    PRE_BASIL_VERSIONS,
    VERSIONS,
    Line,
    charge_refunded,
    checkout_session,
    dispute_event,
    invoice_paid,
    invoice_payment,
    invoice_payment_paid,
    refund,
    refund_event,
)

SETTINGS = WebhookSettings(
    credits={
        "price_credits": Rate(credits=1, amount=1, currency="usd"),  # a credit a cent
        "price_pack": Rate(credits=5000, amount=2900, currency="usd"),  # 5,000 credits for $29
        "price_basic": Rate(credits=10_000, amount=1000, currency="usd"),
        "price_pro": Rate(credits=60_000, amount=3000, currency="usd"),
        "prod_by_product": Rate(credits=3, amount=1, currency="usd"),
        "price_euro": Rate(credits=1, amount=1, currency="eur"),
    },
    customers={"cus_mapped": "mapped"},
)


def read(event: Any, settings: WebhookSettings = SETTINGS) -> PaymentEvent:
    return read_payment_event(settings, event)


CHECKOUT_KINDS = ["checkout.session.completed", "checkout.session.async_payment_succeeded"]
REFUND_KINDS = ["refund.created", "refund.updated", "refund.failed", "charge.refund.updated"]
DISPUTE_KINDS = [
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
]


def unappliable(answer: PaymentEvent, outcome: str) -> None:
    assert (answer.outcome, answer.error, answer.pay, answer.reversals) == (outcome, True, None, ())
    assert answer.why


# --- Payments -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", CHECKOUT_KINDS)
def test_a_paid_checkout_session_buys_what_its_price_gives_for_the_amount_paid(
    version: str, kind: str
) -> None:
    answer = read(checkout_session(version, event_type=kind, amount_total=2900, price="price_pack"))
    assert answer == PaymentEvent(refs=("cs_test_1", "pi_1"), account="acme", pay=(2900, "usd", 5000))


def test_three_packs_paid_buy_three_times_the_credits() -> None:
    answer = read(checkout_session(amount_total=3 * 2900, price="price_pack"))
    assert answer.pay == (8700, "usd", 15_000)


def test_a_checkout_session_with_an_invoice_names_it_too() -> None:
    answer = read(checkout_session(invoice="in_9", price="price_credits"))
    assert answer.refs == ("cs_test_1", "pi_1", "in_9")


def test_a_checkout_session_without_a_price_is_bought_at_its_currency_rate() -> None:
    by_currency = WebhookSettings(currencies={"usd": Rate(credits=10, amount=1, currency="usd")})
    assert read(checkout_session(amount_total=2000), by_currency).pay == (2000, "usd", 20_000)
    unappliable(read(checkout_session(amount_total=2000)), "no_mapped_price")
    unappliable(read(checkout_session(amount_total=2000, price="price_unknown")), "no_mapped_price")


def test_expanded_line_items_buy_at_each_lines_rate() -> None:
    lines = [Line(2900, price="price_pack"), Line(1000, price="price_unmapped", product="prod_unmapped")]
    answer = read(checkout_session(amount_total=3900, line_items=lines))
    assert answer.pay == (3900, "usd", 5000)  # the unmapped line buys nothing


def test_an_exclusive_tax_or_a_discount_on_a_checkout_session_buys_no_credits() -> None:
    taxed = read(checkout_session(amount_total=2400, amount_tax=400, price="price_credits"))
    assert taxed.pay == (2400, "usd", 2000)
    discounted = read(checkout_session(amount_total=1500, amount_discount=500, price="price_credits"))
    assert discounted.pay == (1500, "usd", 1500)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_subscription_checkout_session_only_links_its_first_invoice(version: str) -> None:
    session = checkout_session(version, mode="subscription", payment_status="paid", amount_total=2900)
    assert read(session) == PaymentEvent(refs=("cs_test_1", "in_1"), account="acme")
    # A trial's session requires no payment: nothing paid (its $0 invoice buys nothing either).
    for status, total in (("no_payment_required", 0), ("paid", 0)):
        trial = read(
            checkout_session(version, mode="subscription", payment_status=status, amount_total=total)
        )
        assert (trial.outcome, trial.error, trial.pay) == ("nothing_paid", False, None)


def test_a_session_that_took_no_money_buys_nothing() -> None:
    for session in (
        checkout_session(amount_total=0, price="price_credits"),  # a 100% coupon
        checkout_session(payment_status="no_payment_required", amount_total=0),
        checkout_session(mode="setup", payment_status="no_payment_required", amount_total=0),
    ):
        answer = read(session)
        assert (answer.outcome, answer.error, answer.pay) == ("nothing_paid", False, None)


def test_a_session_whose_delayed_payment_has_not_succeeded_is_not_paid_yet() -> None:
    answer = read(checkout_session(payment_status="unpaid", price="price_credits"))
    assert (answer.outcome, answer.error, answer.pay) == ("not_paid_yet", False, None)


def test_a_rate_in_another_currency_buys_nothing() -> None:
    unappliable(read(checkout_session(currency="eur", price="price_pack")), "currency_not_mapped")
    euro_lines = [Line(2000, price="price_euro")]
    unappliable(read(invoice_paid(lines=euro_lines)), "currency_not_mapped")
    assert read(invoice_paid(lines=euro_lines, currency="eur")).pay == (2000, "eur", 2000)


@pytest.mark.parametrize("version", PRE_BASIL_VERSIONS)
def test_an_invoice_before_basil_names_its_payment_intent_and_charge(version: str) -> None:
    answer = read(invoice_paid(version, [Line(2900, price="price_pack")]))
    assert answer == PaymentEvent(refs=("in_1", "pi_1", "ch_1"), account="acme", pay=(2900, "usd", 5000))


@pytest.mark.parametrize("version", BASIL_VERSIONS)
def test_an_invoice_since_basil_names_the_payment_intents_it_lists(version: str) -> None:
    lines = [Line(2900, price="price_pack")]
    assert read(invoice_paid(version, lines)).refs == ("in_1",)  # events rarely list payments
    partial = [
        invoice_payment(payment_intent="pi_a", amount=900, payment="inpay_a"),
        invoice_payment(payment_intent="pi_b", amount=2000, payment="inpay_b"),
    ]
    answer = read(invoice_paid(version, lines, payments=partial))
    assert answer == PaymentEvent(refs=("in_1", "pi_a", "pi_b"), account="acme", pay=(2900, "usd", 5000))


@pytest.mark.parametrize("version", BASIL_VERSIONS)
def test_invoice_payment_paid_links_an_invoice_to_what_paid_it(version: str) -> None:
    assert read(invoice_payment_paid(version)) == PaymentEvent(refs=("in_1", "pi_1"))
    by_charge = read(invoice_payment_paid(version, payment_intent=None, charge="ch_9"))
    assert by_charge == PaymentEvent(refs=("in_1", "ch_9"))
    record = read(invoice_payment_paid(version, payment_intent=None))
    assert (record.outcome, record.error, record.refs) == ("nothing_to_link", False, ("in_1",))


@pytest.mark.parametrize("version", VERSIONS)
def test_a_proration_invoice_buys_what_its_lines_are_worth_scaled_to_what_was_paid(version: str) -> None:
    # Basic ($10 for 10,000) to pro ($30 for 60,000) mid-period: half of pro charged, half of basic
    # credited back. The lines are worth 30,000 - 5,000 credits for $15 - $5.
    upgrade = [Line(1500, price="price_pro"), Line(-500, price="price_basic", proration=True)]
    assert read(invoice_paid(version, upgrade)).pay == (1000, "usd", 25_000)
    # The customer's credit balance paid $4 of it: credits follow the $6 paid.
    assert read(invoice_paid(version, upgrade, 600)).pay == (600, "usd", 15_000)


def test_lines_of_unmapped_prices_buy_nothing_and_products_map_when_prices_do_not() -> None:
    lines = [Line(1000, price="price_credits"), Line(1000, price="price_other", product="prod_other")]
    assert read(invoice_paid(lines=lines)).pay == (2000, "usd", 1000)
    by_product = [Line(1000, price="price_other", product="prod_by_product")]
    assert read(invoice_paid(lines=by_product)).pay == (1000, "usd", 3000)
    unmapped = [Line(1000, price="price_other", product="prod_other")]
    unappliable(read(invoice_paid(lines=unmapped)), "no_mapped_price")


@pytest.mark.parametrize("version", VERSIONS)
def test_taxes_discounts_and_overpayment_on_an_invoice_buy_no_credits(version: str) -> None:
    lines = [Line(2000, price="price_credits")]
    assert read(invoice_paid(version, lines, tax=400)).pay == (2400, "usd", 2000)  # exclusive tax
    assert read(invoice_paid(version, lines, inclusive_tax=300)).pay == (2000, "usd", 2000)
    assert read(invoice_paid(version, lines, discount=500)).pay == (1500, "usd", 1500)
    assert read(invoice_paid(version, lines, 2500)).pay == (2500, "usd", 2000)  # overpaid


def test_lines_an_event_does_not_list_buy_nothing() -> None:
    event = invoice_paid(lines=[Line(1000, price="price_credits")], amount_paid=4000, has_more=True)
    event["data"]["object"]["subtotal"] = event["data"]["object"]["total"] = 4000
    assert read(event).pay == (4000, "usd", 1000)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_zero_invoice_buys_nothing(version: str) -> None:
    trial = read(invoice_paid(version, [Line(0, price="price_pro")], billing_reason="subscription_create"))
    assert (trial.outcome, trial.error, trial.pay, trial.account) == ("nothing_paid", False, None, "acme")


def test_the_account_comes_from_metadata_else_from_the_customers_map() -> None:
    assert read(invoice_paid(account=None, customer="cus_mapped")).account == "mapped"
    assert read(invoice_paid(account=None, customer="cus_unknown")).account is None
    assert read(checkout_session(account=None, customer="cus_mapped", price="price_pack")).account == "mapped"


# --- Refunds and disputes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_a_charge_refunded_event_gives_the_refunded_total_when_it_lists_no_refunds(version: str) -> None:
    answer = read(charge_refunded(version, amount_refunded=700, created=CREATED + 5))
    total = Reversal(id=REFUNDED_TOTAL, kind=REFUNDED_TOTAL, amount=700, status="", at=CREATED + 5)
    assert answer == PaymentEvent(refs=("pi_1", "ch_1"), reversals=(total,))


@pytest.mark.parametrize("version", VERSIONS)
def test_a_charge_listing_its_refunds_gives_each_of_them(version: str) -> None:
    refunds = [
        refund(refund_id="re_1", amount=500, status="succeeded", created=CREATED - 2),
        refund(refund_id="re_2", amount=300, status="failed", created=CREATED - 1),
    ]
    answer = read(charge_refunded(version, True, refunds=refunds))
    assert answer.refs == ("pi_1", "ch_1")
    assert answer.reversals == (
        Reversal(id="re_1", kind=REFUND, amount=500, status="succeeded", at=CREATED - 2),
        # A failed refund ends at the event's time: a refunded total taken between the two still held it.
        Reversal(id="re_2", kind=REFUND, amount=300, status="failed", at=CREATED - 1, ended=CREATED),
    )
    # A listing cut short: the refunded total stands for the refunds it leaves out.
    cut = read(charge_refunded(version, True, refunds=refunds, has_more=True, amount_refunded=1200))
    assert [r.id for r in cut.reversals] == ["re_1", "re_2", REFUNDED_TOTAL]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", REFUND_KINDS)
@pytest.mark.parametrize("status", sorted(RANK[REFUND]))
def test_a_refund_event_gives_the_refund_as_far_as_it_went(version: str, kind: str, status: str) -> None:
    answer = read(refund_event(kind, status, version=version, refund_id="re_7", amount=250))
    ended = CREATED if status in REFUND_ENDED else 0
    expected = Reversal(id="re_7", kind=REFUND, amount=250, status=status, at=CREATED, ended=ended)
    assert answer == PaymentEvent(refs=("pi_1", "ch_1"), reversals=(expected,))


def test_a_refund_of_a_charge_without_a_payment_intent_names_the_charge() -> None:
    assert read(refund_event(payment_intent=None)).refs == ("ch_1",)
    unappliable(read(refund_event(payment_intent=None, charge=None)), "malformed_event")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", DISPUTE_KINDS)
@pytest.mark.parametrize("status", sorted(RANK[DISPUTE]))
def test_a_dispute_event_gives_the_dispute_as_far_as_it_has_gone(
    version: str, kind: str, status: str
) -> None:
    answer = read(dispute_event(kind, status, version=version, dispute="dp_7", amount=1200))
    expected = Reversal(id="dp_7", kind=DISPUTE, amount=1200, status=status, at=CREATED)
    assert answer == PaymentEvent(refs=("pi_1", "ch_1"), reversals=(expected,))


def test_a_status_the_payment_rules_do_not_rank_is_unappliable() -> None:
    unappliable(read(refund_event(status="reversed")), "malformed_event")
    unappliable(read(dispute_event(status="charge_refunded")), "malformed_event")  # retired in 2015


# --- What cannot apply -------------------------------------------------------------------------------------


def test_api_versions_whose_shapes_are_unknown_are_refused() -> None:
    assert {BASIL, LATEST, "2024-06-20", "2024-09-30.acacia"} <= SUPPORTED_API_VERSIONS
    for version in ("2022-08-01", "2027-01-27.fig", "2025-03-31", "", None, 20250331):
        event = checkout_session(price="price_pack")
        event["api_version"] = version
        unappliable(read(event), "unsupported_api_version")
    event = checkout_session(price="price_pack")
    del event["api_version"]
    unappliable(read(event), "unsupported_api_version")


def test_events_that_are_not_about_payments_are_ignored_whatever_their_version() -> None:
    for kind in ("customer.subscription.updated", "invoice.payment_failed", "payment_intent.succeeded"):
        answer = read({"id": "evt_1", "type": kind, "api_version": "2019-01-01", "data": {"object": {}}})
        assert (answer.outcome, answer.error, answer.refs) == ("ignored", False, ())
    handled = {*CHECKOUT_KINDS, "invoice.paid", "invoice_payment.paid", "charge.refunded", *REFUND_KINDS}
    assert handled | set(DISPUTE_KINDS) == PAYMENT_EVENT_TYPES


def _set(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    *parents, last = path.split(".")
    obj = changed
    for name in parents:
        obj = obj[int(name)] if isinstance(obj, list) else obj[name]
    if value is _DELETE:
        del obj[last]
    else:
        obj[last] = value
    return changed


_DELETE = object()


@pytest.mark.parametrize(
    ("builder", "path", "value"),
    [
        (lambda: checkout_session(price="price_pack"), "data.object.amount_total", 20.5),
        (lambda: checkout_session(price="price_pack"), "data.object.amount_total", -1),
        (lambda: checkout_session(price="price_pack"), "data.object.amount_total", True),
        (lambda: checkout_session(price="price_pack"), "data.object.amount_total", MAX_AMOUNT + 1),
        (lambda: checkout_session(price="price_pack"), "data.object.currency", _DELETE),
        (lambda: checkout_session(price="price_pack"), "data.object.currency", "dollars"),
        (lambda: checkout_session(price="price_pack"), "data.object.id", _DELETE),
        (lambda: checkout_session(price="price_pack"), "data.object.payment_status", "maybe"),
        (lambda: checkout_session(price="price_pack"), "data.object.payment_intent", 12),
        (lambda: checkout_session(price="price_pack"), "id", _DELETE),
        (lambda: checkout_session(price="price_pack"), "data", []),
        (lambda: invoice_paid(), "data.object.amount_paid", "2000"),
        (lambda: invoice_paid(), "data.object.lines", _DELETE),
        (lambda: invoice_paid(), "data.object.lines.data.0.amount", 1e3),
        (lambda: invoice_paid(), "data.object.payment_intent", "has space"),
        (lambda: invoice_paid(), "data.object.currency", None),
        (lambda: charge_refunded(), "data.object.amount_refunded", 0),
        (lambda: charge_refunded(), "data.object.id", _DELETE),
        (lambda: charge_refunded(), "created", "yesterday"),
        (lambda: refund_event(), "data.object.amount", 0),
        (lambda: refund_event(), "data.object.status", None),
        (lambda: refund_event(), "data.object.currency", _DELETE),
        (lambda: dispute_event(), "data.object.amount", MAX_AMOUNT + 1),
        (lambda: dispute_event(), "data.object.id", ""),
        (lambda: dispute_event(), "created", -1),
    ],
)
def test_a_malformed_event_is_unappliable(builder: Any, path: str, value: Any) -> None:
    assert read(builder()).outcome is None  # as built, it applies
    unappliable(read(_set(builder(), path, value)), "malformed_event")


def test_money_that_buys_no_credits_or_more_than_an_account_holds_is_unappliable() -> None:
    poor = WebhookSettings(credits={"price_credits": Rate(credits=1, amount=10_000, currency="usd")})
    unappliable(read(invoice_paid(), poor), "no_mapped_price")  # $20 at a credit per $100
    downgrade = [Line(1000, price="price_other", product="prod_other"), Line(-500, price="price_basic")]
    unappliable(read(invoice_paid(lines=downgrade)), "no_mapped_price")  # worth less than nothing
    rich = WebhookSettings(credits={"price_credits": Rate(credits=MAX_CREDITS, amount=1, currency="usd")})
    unappliable(read(invoice_paid(), rich), "no_mapped_price")


# --- Whatever comes in -------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


def _well_formed(answer: PaymentEvent) -> None:
    """What the ledger relies on in every answer."""
    assert isinstance(answer, PaymentEvent)
    assert all(isinstance(ref, str) and ref for ref in answer.refs)
    assert len(set(answer.refs)) == len(answer.refs)
    if answer.error:
        assert answer.outcome and answer.pay is None and not answer.reversals
    if answer.pay is not None:
        paid, currency, credits = answer.pay
        assert answer.outcome is None and answer.refs
        assert 0 < paid <= MAX_AMOUNT and len(currency) == 3 and 0 < credits <= MAX_CREDITS
    for reversal in answer.reversals:
        assert answer.outcome is None and answer.refs
        assert 0 < reversal.amount <= MAX_AMOUNT
        assert reversal.kind == REFUNDED_TOTAL or reversal.status in RANK[reversal.kind]


@settings(max_examples=500, deadline=None)
@given(JSON)
def test_any_json_at_all_gets_an_answer(value: Any) -> None:
    _well_formed(read(value))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


FIXTURES = [
    checkout_session(price="price_pack"),
    checkout_session(line_items=[Line(2900, price="price_pack")], amount_total=2900),
    checkout_session(mode="subscription"),
    invoice_paid(PRE_BASIL_VERSIONS[0], [Line(1500, price="price_pro"), Line(-500, price="price_basic")]),
    invoice_paid(LATEST, [Line(2000)], tax=100, payments=[invoice_payment()]),
    invoice_payment_paid(),
    charge_refunded(),
    charge_refunded(PRE_BASIL_VERSIONS[0], True),
    refund_event(),
    dispute_event(),
]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIXTURES), st.data())
def test_any_part_of_a_real_event_replaced_by_any_json_gets_an_answer(fixture: Any, data: Any) -> None:
    event = copy.deepcopy(fixture)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(event)
        if not paths:
            break
        *parents, last = data.draw(st.sampled_from(paths))
        obj = event
        for step in parents:
            obj = obj[step]
        obj[last] = data.draw(JSON)
    _well_formed(read(event))


@pytest.mark.parametrize("fixture", FIXTURES)
def test_every_fixture_reads_as_something_to_apply(fixture: dict[str, Any]) -> None:
    answer = read(fixture)
    _well_formed(answer)
    assert answer.outcome is None and answer.refs
