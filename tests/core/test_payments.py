"""The payments rules on plain values: credits follow money, exactly, in any order."""

from __future__ import annotations

import itertools
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from creditgate.core.payments import (
    DISPUTE,
    MAX_AMOUNT,
    REFUND,
    REFUNDED_TOTAL,
    Account,
    Payment,
    Rate,
    Reversal,
    apply_event,
    credits_for_lines,
    merge_reversal,
    reversed_and_held,
    share,
)

PACK = Rate(credits=10_000, amount=2900, currency="usd")


def paid_payment(paid: int = 1000, credits: int = 10_000) -> tuple[Account, Payment]:
    account, payment = Account(), Payment("pi_1")
    apply_event(account, payment, pay=(paid, "usd", credits))
    return account, payment


def test_a_rate_buys_credits_for_what_was_paid_rounded_down() -> None:
    assert PACK.credits_for(2900) == 10_000
    assert PACK.credits_for(3 * 2900) == 30_000  # three packs, three times the credits
    assert PACK.credits_for(1) == 3  # 3.44..., never a credit not paid for
    assert PACK.credits_for(0) == 0  # a trial's $0 buys nothing


def test_an_invoice_values_each_line_at_its_rate_and_scales_to_what_was_paid() -> None:
    basic = Rate(credits=1000, amount=1000, currency="usd")
    pro = Rate(credits=20_000, amount=4000, currency="usd")
    # A portal switch: unused time on basic (-$10) and remaining time on pro (+$40): $30 paid.
    assert credits_for_lines([(-1000, basic), (4000, pro)], 3000) == 20_000 - 1000
    # A 50% discount halves what was paid, and so the credits.
    assert credits_for_lines([(4000, pro)], 2000) == 10_000
    # A line of an unmapped price buys nothing, and dilutes nothing that was not paid for it.
    assert credits_for_lines([(4000, pro), (4000, None)], 8000) == 20_000
    # Down-switch: nothing paid, nothing bought; a negative total buys nothing.
    assert credits_for_lines([(-3000, pro), (1000, basic)], 0) == 0


def test_reversals_take_back_the_share_of_money_reversed_and_partial_refunds_add_up() -> None:
    account, payment = paid_payment(paid=3, credits=10)
    taken = [
        apply_event(account, payment, reversals=[Reversal(f"re_{i}", REFUND, 1, "succeeded", i)]).taken
        for i in range(3)
    ]
    assert taken == [3, 3, 4]  # floor(10/3), floor(20/3) - 3, 10 - 6: the running total is rounded
    assert sum(taken) == 10 and account.balance == 0


@given(
    paid=st.integers(1, MAX_AMOUNT),
    credits=st.integers(0, MAX_AMOUNT),
    parts=st.lists(st.integers(1, MAX_AMOUNT), min_size=1, max_size=6),
)
def test_whatever_the_refunds_never_more_than_granted_and_exactly_the_share(
    paid: int, credits: int, parts: list[int]
) -> None:
    account, payment = paid_payment(paid, credits)
    for i, part in enumerate(parts):
        apply_event(account, payment, reversals=[Reversal(f"re_{i}", REFUND, part, "succeeded", i)])
    gone = min(sum(parts), paid)
    assert payment.taken == int(Fraction(credits * gone, paid)) <= credits
    assert account.balance - account.debt == credits - payment.taken


def test_a_reversal_beyond_the_balance_becomes_debt_that_the_next_credit_pays_first() -> None:
    account, payment = paid_payment()
    account.balance = 1  # 9,999 spent
    apply_event(account, payment, reversals=[Reversal("dp_1", DISPUTE, 1000, "lost")])
    assert (account.balance, account.debt) == (0, 9_999)
    account.give(10_000)
    assert (account.balance, account.debt) == (1, 0)


def test_disputes_inquiries_freeze_take_and_release() -> None:
    account, payment = paid_payment()
    apply_event(account, payment, reversals=[Reversal("dp_1", DISPUTE, 1000, "warning_needs_response")])
    assert (account.balance, account.frozen) == (10_000, 0)  # an inquiry takes nothing
    apply_event(account, payment, reversals=[Reversal("dp_1", DISPUTE, 400, "needs_response")])
    assert (account.balance, account.frozen) == (6_000, 4_000)
    apply_event(account, payment, reversals=[Reversal("dp_1", DISPUTE, 400, "lost")])
    assert (account.balance, account.frozen, payment.taken) == (6_000, 0, 4_000)


def test_a_failed_refund_gives_back_and_an_older_status_never_undoes_a_newer_one() -> None:
    account, payment = paid_payment()
    apply_event(account, payment, reversals=[Reversal("re_1", REFUND, 500, "failed", 1)])
    apply_event(account, payment, reversals=[Reversal("re_1", REFUND, 500, "pending", 1)])  # older, late
    assert account.balance == 10_000


def test_a_charges_refunded_total_counts_when_its_refunds_are_not_listed() -> None:
    reversals = {REFUNDED_TOTAL: Reversal(REFUNDED_TOTAL, REFUNDED_TOTAL, 600, "", at=10)}
    assert reversed_and_held(1000, reversals) == (600, 0)
    # A refund in that total (created before it) that failed after it was taken comes off it...
    reversals["re_1"] = Reversal("re_1", REFUND, 200, "failed", at=5, ended=12)
    assert reversed_and_held(1000, reversals) == (400, 0)
    # ... but not one that had failed before the total was taken (the total already left it out).
    reversals["re_1"] = Reversal("re_1", REFUND, 200, "failed", at=5, ended=8)
    assert reversed_and_held(1000, reversals) == (600, 0)
    # A refund created after the total was not in it: a new total (its own event) counts it.
    reversals["re_2"] = Reversal("re_2", REFUND, 300, "failed", at=11, ended=12)
    assert reversed_and_held(1000, reversals) == (600, 0)


REVERSALS = [
    Reversal("re_1", REFUND, 300, "pending", 1),
    Reversal("re_1", REFUND, 300, "succeeded", 1),
    Reversal("re_2", REFUND, 200, "failed", 2, ended=4),
    Reversal("dp_1", DISPUTE, 500, "needs_response"),
    Reversal("dp_1", DISPUTE, 500, "won"),
    Reversal(REFUNDED_TOTAL, REFUNDED_TOTAL, 300, "", at=3),
]


def test_every_order_of_the_same_events_ends_the_same_and_duplicates_change_nothing() -> None:
    ends = set()
    for order in itertools.permutations(REVERSALS):
        account, payment = paid_payment()
        for reversal in [*order, order[0]]:
            apply_event(account, payment, reversals=[reversal])
        ends.add((account.balance, account.debt, account.frozen, payment.taken, payment.held))
    assert ends == {(7_000, 0, 0, 3_000, 0)}


def test_reversals_before_their_payment_are_applied_with_it() -> None:
    account, payment = Account(), Payment("pi_1")
    apply_event(account, payment, reversals=[Reversal("re_1", REFUND, 500, "succeeded", 1)])
    assert (account.balance, payment.taken) == (0, 0)
    applied = apply_event(account, payment, pay=(1000, "usd", 10_000))
    assert (applied.granted, applied.taken, account.balance) == (10_000, 5_000, 5_000)


def test_merging_is_the_same_in_either_order() -> None:
    for a, b in itertools.permutations(REVERSALS, 2):
        if a.id == b.id:
            assert merge_reversal(a, b) == merge_reversal(b, a)


def test_share_is_exact_where_floats_are_not() -> None:
    assert share(10**15 - 3, 10**15 // 3 + 11, 10**15 - 7) == (10**15 - 3) * (10**15 // 3 + 11) // (
        10**15 - 7
    )
    assert share(5, 10, 0) == 0


def test_an_appealed_dispute_won_gives_back_what_the_loss_took() -> None:
    account, payment = paid_payment()
    for at, status in ((10, "needs_response"), (20, "lost"), (30, "appeal_needs_response"), (40, "won")):
        apply_event(account, payment, reversals=[Reversal("dp_1", DISPUTE, 1000, status, at)])
        if status == "lost":
            assert (account.balance, payment.taken) == (0, 10_000)
    assert (account.balance, account.frozen, payment.taken) == (10_000, 0, 0)
    # The first decision, delivered late, does not undo the appeal's.
    apply_event(account, payment, reversals=[Reversal("dp_1", DISPUTE, 1000, "lost", 20)])
    assert account.balance == 10_000
