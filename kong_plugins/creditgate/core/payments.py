"""Payments and their reversals: the rules that make credits follow money, on plain values.

A **payment** is money received once, under one canonical key (a Checkout session, its invoice and its
PaymentIntent are one payment): the amount actually paid (smallest currency unit, net of discounts,
the customer's credit balance and prorations), its currency, and the credits it bought. A payment of 0
buys nothing (a trial's allowance comes from the plan). A payment is granted once, whatever number of
events name it.

A **reversal** is money going back, or held, against one payment, known by its own id: a refund
(``pending`` and ``succeeded`` take, ``failed`` and ``canceled`` give back what it took), a dispute
(an inquiry, ``warning_*``, takes nothing; ``needs_response`` and ``under_review`` freeze; ``lost``
and an appeal of it take; ``won`` and ``prevented`` release), or the charge's own refunded total when an
event does not list its refunds. Each reversal only moves forward (``Reversal.rank``: a refund by its
status, a dispute by its event's time, then status): an older event never undoes a newer one, and a
duplicate changes nothing.

**Credits follow the money, exactly.** With ``C`` credits bought for ``P`` paid, ``R`` reversed
(refunds in effect plus disputes lost, at most ``P``) and ``H`` held by open disputes (at most
``P - R``), the payment has taken back ``floor(C * R / P)`` credits and holds
``floor(C * (R + H) / P) - floor(C * R / P)`` more. The rounding is cumulative: partial refunds that add
up to the whole take back exactly ``C``, never more, and each step takes the difference of the two
floors, so the order of reversals changes nothing. ``store/lua/payment.lua`` is the same rule in the
one script that applies it; this module is the reference it is tested against.

What is taken from an account comes out of its balance first; what the balance cannot cover becomes
**debt**, which the next credit pays first and which refuses the account's requests while it is open.
Held credits leave the balance the same way and are counted in ``frozen`` until their dispute closes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from creditgate.core.model import MAX_CREDITS

# An amount of money is at most this many of its smallest unit (10^15 cents is 10^13 dollars): the
# bound under which store/lua/payment.lua's exact multiply-divide holds (values below 2^52).
MAX_AMOUNT = MAX_CREDITS

REFUND = "refund"
DISPUTE = "dispute"
REFUNDED_TOTAL = "refunded_total"  # a charge's amount_refunded, when its refunds are not listed

# How far each status has gone: a reversal takes a new status only of a higher rank.
RANK: dict[str, dict[str, int]] = {
    REFUND: {"pending": 1, "requires_action": 1, "succeeded": 2, "failed": 3, "canceled": 3},
    DISPUTE: {
        "warning_needs_response": 1,
        "warning_under_review": 2,
        "warning_closed": 3,
        "needs_response": 4,
        "under_review": 5,
        "won": 6,
        "lost": 6,
        "prevented": 6,
        "appeal_needs_response": 7,  # since 2026-10-28.endive: a lost dispute appealed
        "appeal_under_review": 8,
    },
}
REFUND_IN_EFFECT = frozenset({"pending", "requires_action", "succeeded"})
REFUND_ENDED = frozenset({"failed", "canceled"})
DISPUTE_HELD = frozenset({"needs_response", "under_review"})
DISPUTE_TAKEN = frozenset({"lost", "appeal_needs_response", "appeal_under_review"})


@dataclass(frozen=True)
class Rate:
    """Credits per amount paid in one currency: ``credits`` for every ``amount`` (smallest unit)."""

    credits: int
    amount: int
    currency: str

    def credits_for(self, paid: int) -> int:
        """The credits ``paid`` buys, rounded down: never a credit not paid for."""
        return paid * self.credits // self.amount


def credits_for_lines(lines: Iterable[tuple[int, Rate | None]], paid: int) -> int:
    """The credits an invoice's payment buys: each line's amount at its price's rate (a line of an
    unmapped price buys nothing, a negative proration line takes its value back), scaled to what was
    actually paid (discounts and the customer's credit balance lower it), rounded down once, at 0 at least.
    """
    lines = list(lines)
    total = sum(amount for amount, _ in lines)
    if total <= 0 or paid <= 0:
        return 0
    value = sum((Fraction(amount * rate.credits, rate.amount) for amount, rate in lines if rate), Fraction(0))
    return max(int(value * paid // total), 0)


def share(credits: int, part: int, whole: int) -> int:
    """``floor(credits * part / whole)``, ``part`` held within ``[0, whole]``; 0 when nothing was paid."""
    if whole <= 0:
        return 0
    return credits * min(max(part, 0), whole) // whole


@dataclass(frozen=True)
class Reversal:
    """One refund or dispute of a payment (or a charge's refunded total), as far as it has gone."""

    id: str
    kind: str  # REFUND, DISPUTE or REFUNDED_TOTAL
    amount: int
    status: str  # for REFUNDED_TOTAL: "" (the total as of ``at``)
    at: int = 0  # a refund's creation; for a dispute and REFUNDED_TOTAL, the event's creation
    ended: int = 0  # a refund that failed or was canceled: its event's creation (0 otherwise)

    def rank(self) -> int:
        """How far it has gone. A dispute goes by its event's time first (an appeal takes a lost dispute
        back to ``won``), its status within one second; a refund by its status."""
        if self.kind == REFUNDED_TOTAL:
            return self.at
        if self.kind == DISPUTE:
            return self.at * 16 + RANK[DISPUTE][self.status]
        return RANK[self.kind][self.status]

    def effect(self) -> str:
        """What the reversal does to its payment's credits now: "take", "hold" or "none". The store's
        script is given it with each reversal, so that the statuses' meaning is declared here only."""
        if self.kind == REFUNDED_TOTAL:
            return "take"
        if self.kind == REFUND:
            return "take" if self.status in REFUND_IN_EFFECT else "none"
        if self.status in DISPUTE_TAKEN:
            return "take"
        return "hold" if self.status in DISPUTE_HELD else "none"


def merge_reversal(known: Reversal | None, new: Reversal) -> Reversal:
    """The reversal after an event about it: the one that has gone furthest (``RANK``; a charge's
    refunded total: its newest event), ties broken by amount, status and time, so that the result is the
    same in any order of the events and a duplicate changes nothing."""
    if known is None:
        return new
    return max(known, new, key=order_key)


def order_key(reversal: Reversal) -> tuple[int, int, str, int, int]:
    return (reversal.rank(), reversal.amount, reversal.status, reversal.at, reversal.ended)


def reversed_and_held(paid: int, reversals: Mapping[str, Reversal]) -> tuple[int, int]:
    """Money reversed (refunds in effect plus disputes lost, at most ``paid``) and money held by open
    disputes (at most what is not reversed). A charge's refunded total counts when the refunds known one
    by one add up to less; a refund that was in that total (created before it) and failed after it was
    taken comes off it."""
    listed = [r for r in reversals.values() if r.kind != REFUNDED_TOTAL]
    refunds = sum(r.amount for r in listed if r.kind == REFUND and r.effect() == "take")
    total = reversals.get(REFUNDED_TOTAL)
    if total is not None:
        failed_since = sum(
            r.amount
            for r in listed
            if r.kind == REFUND and r.effect() == "none" and r.at <= total.at < r.ended
        )
        refunds = max(refunds, total.amount - failed_since)
    lost = sum(r.amount for r in listed if r.kind == DISPUTE and r.effect() == "take")
    held = sum(r.amount for r in listed if r.kind == DISPUTE and r.effect() == "hold")
    gone = min(refunds + lost, paid)
    return gone, min(held, paid - gone)


@dataclass
class Payment:
    """A payment as the ledger keeps it: what was paid and bought, what its reversals took and hold."""

    key: str
    granted: bool = False
    paid: int = 0
    currency: str = ""
    credits: int = 0
    taken: int = 0
    held: int = 0
    reversals: dict[str, Reversal] = field(default_factory=dict)

    def targets(self) -> tuple[int, int]:
        """What the payment's reversals should have taken back and should hold, now."""
        if not self.granted:
            return 0, 0
        gone, held = reversed_and_held(self.paid, self.reversals)
        taken = share(self.credits, gone, self.paid)
        return taken, share(self.credits, gone + held, self.paid) - taken


@dataclass
class Account:
    """An account's money as payments see it: spendable balance, open debt and credits held."""

    balance: int = 0
    debt: int = 0
    frozen: int = 0

    def give(self, credits: int) -> None:
        """Credits in: the debt is paid first."""
        paid = min(self.debt, credits)
        self.debt -= paid
        self.balance += credits - paid

    def take(self, credits: int) -> None:
        """Credits out: from the balance first, the rest as debt."""
        from_balance = min(self.balance, credits)
        self.balance -= from_balance
        self.debt += credits - from_balance


@dataclass(frozen=True)
class Applied:
    """What one event did to its payment's account: credits granted, taken back (negative: given back)
    and newly held (negative: released)."""

    granted: int = 0
    taken: int = 0
    held: int = 0


def apply_event(
    account: Account,
    payment: Payment,
    *,
    pay: tuple[int, str, int] | None = None,
    reversals: Iterable[Reversal] = (),
) -> Applied:
    """One event on one payment: a payment (paid, currency, credits), granted once, and reversals
    merged; then the account moves by the difference between what the payment's reversals should have
    taken and held and what they had. The reference of ``payment.lua``."""
    granted = 0
    if pay is not None and not payment.granted:
        payment.granted, (payment.paid, payment.currency, payment.credits) = True, pay
        granted = payment.credits
        account.give(granted)
    for reversal in reversals:
        payment.reversals[reversal.id] = merge_reversal(payment.reversals.get(reversal.id), reversal)
    taken, held = payment.targets()
    more_taken, more_held = taken - payment.taken, held - payment.held
    payment.taken, payment.held = taken, held
    out = more_taken + more_held
    if out > 0:
        account.take(out)
    elif out < 0:
        account.give(-out)
    account.frozen += more_held
    return Applied(granted, more_taken, more_held)


__all__ = [
    "DISPUTE",
    "DISPUTE_HELD",
    "DISPUTE_TAKEN",
    "MAX_AMOUNT",
    "RANK",
    "REFUND",
    "REFUNDED_TOTAL",
    "REFUND_ENDED",
    "REFUND_IN_EFFECT",
    "Account",
    "Applied",
    "Payment",
    "Rate",
    "Reversal",
    "apply_event",
    "credits_for_lines",
    "merge_reversal",
    "order_key",
    "reversed_and_held",
    "share",
]
