"""Issue 22, cases 1-8: credits follow what was paid, through every Stripe event, in any order, over real
HTTP to the real service and a real Redis.

Each case of the issue has its tests, named after what it asks; each asserts what the payment paid for
(the old code granted a price's credits per unit, took nothing it could not take whole, read no basil
invoice and no unexpanded refund, forgot a refund that came before its payment, and took everything for
an inquiry). Every event is delivered twice and the second delivery must change nothing (``deliver``);
every look at the account also checks that its ledger replays to its balance (``books``).

The rate used throughout is ``price_pack``: 10,000 credits for every $29.00 paid.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.decision import Reason
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.store import payments
from tests.service.stripe_payloads import (
    BASIL,
    CREATED,
    LATEST,
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
from tests.service.test_webhooks import open_accounts, send, serve
from tests.service_support import Running

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

PRE_BASIL = "2024-06-20"  # invoices name their payment_intent and charge; charges do not list refunds
BILLING_MAP = """
credits:
  price_pack:  {credits: 10000, amount: 2900, currency: usd}   # 10,000 credits for every $29.00
  price_basic: {credits: 10000, amount: 1000, currency: usd}   # the basic plan: 10,000 for $10.00
  price_pro:   {credits: 25000, amount: 4000, currency: usd}   # the pro plan: 25,000 for $40.00
"""


@pytest.fixture
def api(settings: RedisSettings, tmp_path: Path) -> Iterator[Running]:
    with serve(settings, tmp_path, BILLING_MAP) as running:
        open_accounts(running, "acme")
        yield running


@dataclass(frozen=True)
class Books:
    """The account's money as the API shows it."""

    balance: int
    debt: int
    frozen: int


def books(api: Running, account: str = "acme") -> Books:
    """The account's balance, debt and frozen credits, once its ledger is checked to replay to its
    balance (the API's verify: ledger base plus every entry's amount)."""
    verified = api.call("GET", f"/v1/accounts/{account}/ledger/verify").json()
    assert verified["ok"], verified
    shown = api.call("GET", f"/v1/accounts/{account}").json()
    return Books(shown["balance"], shown["debt"], shown["frozen"])


# What an event did, when it moved something: the same event again must say it was already applied.
MOVED = frozenset({"granted", "reversed", "recorded"})


def _joins_references(event: dict[str, Any]) -> bool:
    obj = event["data"]["object"]
    kind = str(event["type"])
    return kind == "invoice_payment.paid" or (
        kind.startswith("checkout.session.") and obj.get("mode") == "subscription"
    )


def deliver(api: Running, event: dict[str, Any]) -> dict[str, Any]:
    """``event`` signed and sent, then sent again (Stripe re-sends): the second delivery changes nothing.
    Returns the first answer."""
    answer = send(api, event)
    assert answer.status_code == 200, answer.text
    first: dict[str, Any] = answer.json()
    before = books(api)
    again = send(api, event)
    assert again.status_code == 200, again.text
    assert books(api) == before
    expected = "already_applied" if first["outcome"] in MOVED else first["outcome"]
    if first["outcome"] in MOVED | {"linked"} and _joins_references(event):
        expected = "linked"  # an event that joins references says so each time
    assert again.json()["outcome"] == expected, (first, again.json())
    return first


def spend(admin: Admin, credits: int, account: str = "acme") -> None:
    """Credits spent through the gate's own charge."""
    charged = admin.store.charge(ChargeRequest(account, credits))
    assert charged.allowed, charged


def gate(admin: Admin, account: str = "acme") -> Reason | None:
    """What a request of one credit gets: None when let through, else the refusal's reason (a shadow
    charge: decided as the gate would, nothing taken)."""
    charged = admin.store.charge(ChargeRequest(account, 1, shadow=True))
    return None if charged.allowed else charged.reason


def pack(
    amount: int = 2900, *, session: str = "cs_1", payment_intent: str = "pi_1", **fields: Any
) -> dict[str, Any]:
    """A paid one-off Checkout session naming price_pack in its metadata."""
    return checkout_session(
        price="price_pack", amount_total=amount, session=session, payment_intent=payment_intent, **fields
    )


# 1. Prorations: a portal plan switch buys what its invoice was paid for, at the lines' rates.


def switch(invoice: str, up: bool, amount_paid: int, version: str = LATEST) -> dict[str, Any]:
    """A portal plan switch (``always_invoice``): unused time on the old price comes back as a negative
    line, the new price's remaining time is charged. Up: basic ($10) to pro ($40), $30 due."""
    basic, pro = (
        Line(1000, price="price_basic", proration=True),
        Line(4000, price="price_pro", proration=True),
    )
    lines = (
        [Line(-basic.amount, basic.price, proration=True), pro]
        if up
        else [Line(-pro.amount, pro.price, proration=True), basic]
    )
    return invoice_paid(
        version, lines, amount_paid, invoice=invoice, billing_reason="subscription_update", created=CREATED
    )


@pytest.mark.parametrize("version", [PRE_BASIL, LATEST])
def test_1_a_plan_switch_buys_the_new_plans_credits_less_the_unused_old_ones_for_what_was_paid(
    api: Running, version: str
) -> None:
    up = deliver(api, switch("in_up", True, 3000, version))
    # 25,000 for the pro line less 10,000 for the basic line given back: never 25,000 for $30.00, and no
    # more than $30.00 buys at the best rate of the two (18,750).
    assert books(api) == Books(15_000, 0, 0)
    assert (up["outcome"], up["credits"]) == ("granted", 15_000)


def test_1_switching_down_and_up_again_and_again_buys_no_credits_it_did_not_pay_for(api: Running) -> None:
    deliver(api, switch("in_up_0", True, 3000))
    assert books(api) == Books(15_000, 0, 0)
    for n in range(1, 4):
        # Down: a negative invoice, $0 paid (the $30 goes to the customer's credit balance) ...
        down = deliver(api, switch(f"in_down_{n}", False, 0))
        # ... and up again, paid from that credit balance: $0 paid, nothing bought.
        up = deliver(api, switch(f"in_up_{n}", True, 0))
        assert books(api) == Books(15_000, 0, 0)
        assert (down["outcome"], up["outcome"]) == ("nothing_paid", "nothing_paid")
    # Half of a switch paid from the credit balance, half by card: half its credits.
    deliver(api, switch("in_up_4", True, 1500))
    assert books(api) == Books(22_500, 0, 0)


# 2. Free trials: a $0 session and a $0 invoice buy nothing.


@pytest.mark.parametrize("version", [PRE_BASIL, LATEST])
def test_2_a_trials_checkout_session_and_its_zero_invoice_grant_nothing(api: Running, version: str) -> None:
    trial = checkout_session(
        version,
        session="cs_trial",
        mode="subscription",
        payment_status="no_payment_required",
        amount_total=0,
        invoice="in_trial",
        price="price_basic",
    )
    deliver(api, trial)
    assert books(api) == Books(0, 0, 0)
    zero = invoice_paid(
        version, [Line(0, price="price_basic")], invoice="in_trial", billing_reason="subscription_create"
    )
    answer = deliver(api, zero)
    assert books(api) == Books(0, 0, 0)
    assert answer["outcome"] == "nothing_paid"
    # The trial ends: the first paid invoice buys what it paid for, once.
    first = invoice_paid(
        version, [Line(1000, price="price_basic")], invoice="in_2", payment_intent="pi_2", charge="ch_2"
    )
    deliver(api, first)
    assert books(api) == Books(10_000, 0, 0)


def test_2_a_trials_checkout_session_is_acknowledged_as_nothing_paid(api: Running) -> None:
    trial = checkout_session(
        session="cs_trial",
        mode="subscription",
        payment_status="no_payment_required",
        amount_total=0,
        invoice="in_trial",
    )
    assert deliver(api, trial)["outcome"] == "nothing_paid"


def test_2_a_fully_discounted_one_off_session_grants_nothing(api: Running) -> None:
    free = pack(0, amount_subtotal=2900, amount_discount=2900)
    answer = deliver(api, free)
    assert books(api) == Books(0, 0, 0)
    assert answer["outcome"] == "nothing_paid"


# 3. One payment, two events: a subscription's Checkout session and its first invoice grant once.


@pytest.mark.parametrize("version", [PRE_BASIL, LATEST])
@pytest.mark.parametrize("session_first", [True, False], ids=["session-first", "invoice-first"])
def test_3_a_subscription_checkout_and_its_first_invoice_paid_grant_once(
    api: Running, version: str, session_first: bool
) -> None:
    session = checkout_session(
        version,
        session="cs_sub",
        mode="subscription",
        amount_total=2900,
        invoice="in_first",
        price="price_pack",
    )
    invoice = invoice_paid(
        version, [Line(2900, price="price_pack")], invoice="in_first", billing_reason="subscription_create"
    )
    answers = [deliver(api, e) for e in ((session, invoice) if session_first else (invoice, session))]
    assert books(api) == Books(10_000, 0, 0)
    assert [a["outcome"] for a in answers] == (
        ["waiting_for_payment", "granted"] if session_first else ["granted", "linked"]
    )


# 4. Quantity: credits for the whole amount paid.


def test_4_three_packs_bought_in_one_session_grant_three_packs_credits(api: Running) -> None:
    deliver(api, pack(3 * 2900))
    assert books(api) == Books(30_000, 0, 0)
    # With 10% off: what was paid, not the list price.
    deliver(api, pack(7830, session="cs_2", payment_intent="pi_2", amount_discount=870))
    assert books(api) == Books(57_000, 0, 0)


# 5. Reversals after spending: taken in full, the rest as debt, paid first by the next credit.


def test_5_a_dispute_lost_after_spending_takes_back_in_full_and_the_rest_is_a_debt_paid_first(
    api: Running, admin: Admin
) -> None:
    deliver(api, pack())
    spend(admin, 1)
    assert books(api) == Books(9_999, 0, 0)
    deliver(api, dispute_event("charge.dispute.created", "needs_response", amount=2900))
    lost = deliver(api, dispute_event("charge.dispute.closed", "lost", amount=2900, created=CREATED + 60))
    assert books(api) == Books(0, 1, 0)
    assert (lost["outcome"], lost["balance"], lost["debt"], lost["frozen"]) == ("reversed", 0, 1, 0)
    record = payments.payment(admin.store, "acme", lost["payment"])
    assert record is not None and (record.credits, record.taken, record.held) == (10_000, 10_000, 0)
    assert gate(admin) is Reason.DEBT_OUTSTANDING
    # The next payment pays the debt first.
    paid = deliver(api, pack(session="cs_2", payment_intent="pi_2"))
    assert books(api) == Books(9_999, 0, 0)
    assert (paid["credits"], paid["balance"], paid["debt"]) == (10_000, 9_999, 0)
    assert gate(admin) is None


def test_5_an_operators_grant_pays_a_debt_first(api: Running, admin: Admin) -> None:
    deliver(api, pack())
    spend(admin, 9_000)
    deliver(api, charge_refunded(LATEST, amount=2900, amount_refunded=2900))
    assert books(api) == Books(0, 9_000, 0)
    granted = api.call(
        "POST", "/v1/accounts/acme/grants", json={"amount": 10_000}, headers={"Idempotency-Key": "g1"}
    )
    assert granted.status_code == 201, granted.text
    assert books(api) == Books(1_000, 0, 0)


@pytest.mark.parametrize("shape", ["refund events", "refunded totals"])
def test_5_partial_refunds_take_back_in_proportion_and_add_up_to_the_whole(
    api: Running, admin: Admin, shape: str
) -> None:
    deliver(api, pack())  # 10,000 credits for $29.00
    spend(admin, 6_000)
    # $10.00, $10.00, then $9.00: floor(10,000 x refunded / 2,900) on the running total.
    refunded, taken = 0, []
    for n, amount in enumerate((1000, 1000, 900), 1):
        refunded += amount
        if shape == "refund events":
            event = refund_event(
                "refund.created", "succeeded", refund_id=f"re_{n}", amount=amount, created=CREATED + n
            )
        else:
            event = charge_refunded(LATEST, amount=2900, amount_refunded=refunded, created=CREATED + n)
        before = books(api)
        deliver(api, event)
        after = books(api)
        taken.append(before.balance - before.debt - (after.balance - after.debt))
    assert taken == [3_448, 3_448, 3_104] and sum(taken) == 10_000
    assert books(api) == Books(0, 6_000, 0)


def test_5_a_half_refund_after_most_was_spent_takes_half_and_the_rest_becomes_debt(
    api: Running, admin: Admin
) -> None:
    deliver(api, pack())
    spend(admin, 9_000)
    half = deliver(api, refund_event("refund.created", "succeeded", amount=1450))
    assert books(api) == Books(0, 4_000, 0)
    assert (half["outcome"], half["taken"]) == ("reversed", 5_000)
    # The refund fails after all: what it took comes back, paying the debt first.
    back = deliver(api, refund_event("refund.failed", "failed", amount=1450, created=CREATED + 60))
    assert books(api) == Books(1_000, 0, 0)
    assert (back["outcome"], back["taken"]) == ("reversed", -5_000)


# 6. Stripe's current API (basil: invoices without payment_intent) and the shape before it.


@pytest.mark.parametrize("version", [BASIL, LATEST])
def test_6_a_refund_of_a_basil_invoices_payment_intent_takes_back_through_invoice_payment_paid(
    api: Running, version: str
) -> None:
    basil_invoice = invoice_paid(version, [Line(2900, price="price_pack")], invoice="in_b")
    assert "payment_intent" not in basil_invoice["data"]["object"]
    deliver(api, basil_invoice)
    assert books(api) == Books(10_000, 0, 0)
    # It moves no credit: it names the invoice's PaymentIntent.
    deliver(api, invoice_payment_paid(version, invoice="in_b", payment_intent="pi_b", amount=2900))
    assert books(api) == Books(10_000, 0, 0)
    # Since 2022-11-15 charge.refunded lists no refunds: the refunded total, of the PaymentIntent.
    refunded = charge_refunded(
        version, amount=2900, amount_refunded=2900, charge="ch_b", payment_intent="pi_b"
    )
    assert "refunds" not in refunded["data"]["object"]
    deliver(api, refunded)
    assert books(api) == Books(0, 0, 0)


def test_6_a_basil_invoice_listing_its_payments_is_found_by_its_payment_intent(api: Running) -> None:
    listed = [invoice_payment(invoice="in_l", payment_intent="pi_l", amount=2900)]
    deliver(api, invoice_paid(LATEST, [Line(2900, price="price_pack")], invoice="in_l", payments=listed))
    dispute = dispute_event(
        "charge.dispute.created", "needs_response", amount=2900, charge="ch_l", payment_intent="pi_l"
    )
    deliver(api, dispute)
    assert books(api) == Books(0, 0, 10_000)


@pytest.mark.parametrize("expanded", [True, False], ids=["refunds-listed", "refunded-total"])
def test_6_a_refund_of_a_pre_basil_invoice_takes_back_in_either_charge_shape(
    api: Running, expanded: bool
) -> None:
    deliver(
        api,
        invoice_paid(
            PRE_BASIL, [Line(2900, price="price_pack")], invoice="in_o", payment_intent="pi_o", charge="ch_o"
        ),
    )
    full = refund(refund_id="re_o", amount=2900, charge="ch_o", payment_intent="pi_o")
    refunded = charge_refunded(
        PRE_BASIL, expanded, refunds=[full], amount=2900, charge="ch_o", payment_intent="pi_o"
    )
    deliver(api, refunded)
    assert books(api) == Books(0, 0, 0)


# 7. Order: a reversal that comes before its payment is applied when the payment comes.


def test_7_a_refund_delivered_before_its_payment_is_applied_when_the_payment_arrives(api: Running) -> None:
    early = deliver(api, refund_event("refund.created", "succeeded", amount=1450))
    assert books(api) == Books(0, 0, 0)
    paid = deliver(api, pack())
    assert books(api) == Books(5_000, 0, 0)
    assert early["outcome"] == "waiting_for_payment"
    assert (paid["outcome"], paid["credits"], paid["taken"]) == ("granted", 10_000, 5_000)


def test_7_a_dispute_delivered_before_its_payment_is_applied_when_the_payment_arrives(api: Running) -> None:
    opened = deliver(api, dispute_event("charge.dispute.created", "needs_response", amount=2900))
    lost = deliver(api, dispute_event("charge.dispute.closed", "lost", amount=2900, created=CREATED + 60))
    paid = deliver(api, invoice_paid(PRE_BASIL, [Line(2900, price="price_pack")]))  # names pi_1 and ch_1
    assert books(api) == Books(0, 0, 0)
    assert (opened["outcome"], lost["outcome"]) == ("waiting_for_payment", "waiting_for_payment")
    assert (paid["credits"], paid["taken"], paid["held"]) == (10_000, 10_000, 0)


BASIL_REFUNDED_PAYMENT = {
    "refund": charge_refunded(
        LATEST, amount=2900, amount_refunded=2900, charge="ch_b", payment_intent="pi_b"
    ),
    "invoice": invoice_paid(LATEST, [Line(2900, price="price_pack")], invoice="in_b"),
    "link": invoice_payment_paid(LATEST, invoice="in_b", payment_intent="pi_b", amount=2900),
}


@pytest.mark.parametrize("order", list(itertools.permutations(BASIL_REFUNDED_PAYMENT)), ids="-".join)
def test_7_a_basil_invoice_refunded_in_full_ends_with_nothing_in_any_order_of_its_events(
    api: Running, order: tuple[str, ...]
) -> None:
    """The refund names the PaymentIntent, the invoice names itself, only the link joins them."""
    answers = {name: deliver(api, BASIL_REFUNDED_PAYMENT[name]) for name in order}
    assert books(api) == Books(0, 0, 0)
    assert answers["invoice"]["outcome"] == "granted"
    if order.index("refund") < order.index("link") and order[-1] == "link":
        # Granted with nothing to take, then the link brings the refund that waited for it.
        assert (answers["link"]["outcome"], answers["link"]["taken"]) == ("reversed", 10_000)


def test_7_a_late_older_dispute_event_does_not_undo_a_newer_one(api: Running) -> None:
    deliver(api, pack())
    deliver(api, dispute_event("charge.dispute.closed", "won", amount=2900, created=CREATED + 60))
    late = deliver(
        api, dispute_event("charge.dispute.created", "needs_response", amount=2900, created=CREATED)
    )
    assert books(api) == Books(10_000, 0, 0)
    assert late["outcome"] == "already_applied"


# 8. Disputes that are not lost, refunds that fail.


def test_8_an_inquiry_takes_nothing_and_its_close_gives_nothing(api: Running) -> None:
    deliver(api, pack())
    inquiry = (
        ("charge.dispute.created", "warning_needs_response"),
        ("charge.dispute.updated", "warning_under_review"),
        ("charge.dispute.closed", "warning_closed"),
    )
    for n, (kind, status) in enumerate(inquiry):
        deliver(api, dispute_event(kind, status, amount=2900, created=CREATED + n))
        assert books(api) == Books(10_000, 0, 0)


@pytest.mark.parametrize("failure_first", [False, True], ids=["created-then-failed", "failed-first"])
def test_8_a_refund_that_fails_gives_back_what_it_took(api: Running, failure_first: bool) -> None:
    deliver(api, pack())
    created = refund_event("refund.created", "pending", amount=2900)
    failed = refund_event("refund.failed", "failed", amount=2900, created=CREATED + 60)
    if failure_first:
        deliver(api, failed)
        late = deliver(api, created)
        assert books(api) == Books(10_000, 0, 0)
        assert late["outcome"] == "already_applied"  # the failure has gone further
    else:
        deliver(api, created)
        assert books(api) == Books(0, 0, 0)
        deliver(api, failed)
        assert books(api) == Books(10_000, 0, 0)


def test_8_an_open_dispute_freezes_its_credits_and_won_releases_them(api: Running) -> None:
    deliver(api, pack())
    opened = deliver(api, dispute_event("charge.dispute.created", "needs_response", amount=2900))
    assert books(api) == Books(0, 0, 10_000)
    assert (opened["held"], opened["taken"]) == (10_000, 0)
    deliver(api, dispute_event("charge.dispute.updated", "under_review", amount=2900, created=CREATED + 30))
    assert books(api) == Books(0, 0, 10_000)
    won = deliver(api, dispute_event("charge.dispute.closed", "won", amount=2900, created=CREATED + 60))
    assert books(api) == Books(10_000, 0, 0)
    assert (won["held"], won["taken"]) == (-10_000, 0)


def test_8_an_open_dispute_lost_takes_what_it_froze(api: Running) -> None:
    deliver(api, pack())
    deliver(api, dispute_event("charge.dispute.created", "needs_response", amount=1450))
    assert books(api) == Books(5_000, 0, 5_000)
    lost = deliver(api, dispute_event("charge.dispute.closed", "lost", amount=1450, created=CREATED + 60))
    assert books(api) == Books(5_000, 0, 0)
    assert (lost["held"], lost["taken"]) == (-5_000, 5_000)


# Versions credit-gate does not read.


def test_an_event_of_an_unsupported_api_version_is_acknowledged_with_an_error_and_changes_nothing(
    api: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    deliver(api, pack())
    for event in (
        pack(session="cs_old", payment_intent="pi_old"),
        charge_refunded(LATEST, amount=2900, amount_refunded=2900),
    ):
        event["api_version"] = "2020-08-27"
        answer = deliver(api, event)
        assert books(api) == Books(10_000, 0, 0)
        assert answer["outcome"] == "unsupported_api_version"
    assert any(
        "unsupported_api_version" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
    )
