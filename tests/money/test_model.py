"""The reference model's rules, on plain values (no server): the money rules as a specification."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from creditgate.core.periods import DAY_SECONDS, WEEK_SECONDS, Period, Window, window_at
from tests.money.account_model import CAP, AccountModel, Refusal, Terms, lattice_window, pay_debt_first

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
DAILY = Terms("daily", Period.DAY, 10, True)
FREE = Terms("free", Period.DAY, 10, False)


def at(year: int, month: int, day: int) -> int:
    return int(dt.datetime(year, month, day, tzinfo=dt.timezone.utc).timestamp())


def account(terms: Terms = DAILY, *, balance: int = 0, anchor: int = T0, starts_at: int = T0) -> AccountModel:
    model = AccountModel()
    model.subscribe(terms, "active", starts_at, anchor, 0)
    if balance:
        model.grant(balance)
    return model


# Periods


def test_a_future_anchor_gives_the_period_of_its_lattice_that_holds_now() -> None:
    anchor = at(2026, 1, 21)
    assert lattice_window(Period.MONTH, anchor, at(2026, 1, 1)) == Window(at(2025, 12, 21), anchor)
    assert lattice_window(Period.DAY, anchor, anchor - 1) == Window(anchor - DAY_SECONDS, anchor)


@given(
    period=st.sampled_from([Period.DAY, Period.WEEK, Period.MONTH]),
    anchor=st.integers(0, 4 * 10**9),
    now=st.integers(0, 4 * 10**9),
)
def test_the_lattice_window_holds_now_and_is_a_window_of_the_anchor(
    period: Period, anchor: int, now: int
) -> None:
    window = lattice_window(period, anchor, now)
    assert window.start <= now < window.end
    if now >= anchor:
        assert window == window_at(period, anchor, now)  # after the anchor: the calendar's period
    if period is not Period.MONTH:
        length = DAY_SECONDS if period is Period.DAY else WEEK_SECONDS
        assert (window.start - anchor) % length == 0 and window.end - window.start == length


def test_a_future_anchor_gives_one_allowance_per_period_not_one_per_request() -> None:
    model = account(FREE, anchor=T0 + 20 * DAY_SECONDS, starts_at=T0 - 3600)
    outcomes = [model.charge(T0 + i, 1) for i in range(100)]
    assert sum(o.allowed for o in outcomes) == 10
    assert [e.kind for e in model.history].count("period_reset") == 1


def test_a_clock_behind_the_period_start_is_counted_in_the_current_period() -> None:
    model = account(FREE)
    end_of_day = T0 + DAY_SECONDS
    assert model.charge(end_of_day - 10, 10).allowed  # the first day's allowance, used up
    allowed = 0
    for i in range(200):  # two nodes one second apart, alternating around the end of a day
        allowed += model.charge(end_of_day + (0 if i % 2 else -1), 1).allowed
    assert allowed == 10
    assert model.period_start == end_of_day  # never moved back to the day before


# Charges


def test_the_allowance_pays_first_then_the_balance() -> None:
    model = account(balance=20)
    first = model.charge(T0 + 1, 8)
    second = model.charge(T0 + 2, 5)
    assert (first.from_allowance, first.from_balance) == (8, 0)
    assert (second.from_allowance, second.from_balance, second.balance) == (2, 3, 17)


def test_a_refusal_moves_no_money() -> None:
    model = account(FREE)
    model.charge(T0 + 1, 10)
    before = model.copy()
    refused = model.charge(T0 + 2, 1)
    assert refused.reason is Refusal.QUOTA_EXHAUSTED and refused.charge is None
    assert (model.balance, model.used, model.history, model.charges) == (
        before.balance,
        before.used,
        before.history,
        before.charges,
    )


def test_refusals_come_in_a_fixed_order() -> None:
    model = AccountModel()
    assert model.charge(T0, 1).reason is Refusal.NO_SUBSCRIPTION
    model.subscribe(FREE, "suspended", T0, T0, T0 + 100)
    assert model.charge(T0, 1).reason is Refusal.SUBSCRIPTION_INACTIVE
    model.set_status("active")
    assert model.charge(T0 - 1, 1).reason is Refusal.SUBSCRIPTION_INACTIVE  # before it starts
    assert model.charge(T0 + 100, 1).reason is Refusal.SUBSCRIPTION_EXPIRED
    assert model.charge(T0, 1, entitled=("pro",)).reason is Refusal.PLAN_NOT_ENTITLED
    assert model.charge(T0, 11).reason is Refusal.QUOTA_EXHAUSTED


def test_a_retried_request_is_answered_by_its_first_charge_and_charged_once() -> None:
    model = account(balance=100)
    first = model.charge(T0 + 1, 30, key="k")
    again = model.charge(T0 + 2, 30, key="k")
    assert again.replayed and again.charge == first.charge and model.balance == 80
    assert not model.charge(T0 + 3, 31, key="k").replayed  # the key is bound to the cost


def test_a_pool_member_is_held_to_its_cap_per_period() -> None:
    model = account(balance=100)
    model.set_member_cap("ann", 4)
    assert model.charge(T0 + 1, 3, member="ann").allowed
    assert model.charge(T0 + 2, 2, member="ann").reason is Refusal.MEMBER_CAP_REACHED
    assert model.charge(T0 + DAY_SECONDS, 4, member="ann").allowed  # a new period


# Credits and the cap


def test_a_grant_counts_once_per_key_and_never_passes_the_cap() -> None:
    model = AccountModel()
    assert model.grant(5, "k").outcome == "applied"
    assert model.grant(5, "k").outcome == "already"
    assert model.grant(CAP).outcome == "refused"
    assert model.grant(CAP - 5).outcome == "applied" and model.balance == CAP
    assert model.adjust_down(CAP + 1).outcome == "refused"


@given(st.lists(st.tuples(st.booleans(), st.integers(1, CAP), st.sampled_from(["", "a", "b"])), max_size=30))
def test_any_sequence_of_grants_and_adjustments_stays_within_zero_and_the_cap(
    operations: list[tuple[bool, int, str]],
) -> None:
    model = AccountModel()
    for up, amount, key in operations:
        (model.grant if up else model.adjust_down)(amount, key)
        assert 0 <= model.balance <= CAP
        assert model.replay() == model.balance
        assert all(e.balance <= CAP for e in model.history)


# Holds and settlements


def test_a_hold_settles_to_its_real_cost_once() -> None:
    model = account(Terms("pay", Period.NONE, 0, True), balance=500)
    hold = model.charge(T0 + 1, 500, hold_seconds=60)
    settled = model.settle(hold.charge, 3, T0 + 30, window=3600, refund=False)
    assert (settled.outcome, settled.given_back, model.balance) == ("applied", 497, 497)
    assert model.settle(hold.charge, 3, T0 + 31, window=3600, refund=False).outcome == "already"


def test_a_hold_past_its_settle_by_is_final_but_a_refund_is_not() -> None:
    model = account(Terms("pay", Period.NONE, 0, True), balance=100)
    hold = model.charge(T0, 50, hold_seconds=60)
    assert model.settle(hold.charge, 10, T0 + 61, window=3600, refund=False).outcome == "late"
    assert model.settle(hold.charge, 0, T0 + 61, window=3600, refund=True).outcome == "applied"
    assert model.balance == 100


def test_a_refund_gives_the_allowance_back_only_to_the_period_it_came_from() -> None:
    model = account(balance=10)
    charge = model.charge(T0 + 1, 12)  # 10 from the allowance, 2 from the balance
    model.charge(T0 + DAY_SECONDS, 0)  # the next day's period starts
    refund = model.settle(charge.charge, 0, T0 + DAY_SECONDS + 1, window=2 * DAY_SECONDS, refund=True)
    assert (refund.given_back, model.balance, model.used) == (2, 10, 0)


def test_a_refund_releases_the_requests_key_so_that_a_retry_is_charged_again() -> None:
    model = account(Terms("pay", Period.NONE, 0, True), balance=10)
    first = model.charge(T0, 4, key="k")
    model.settle(first.charge, 0, T0 + 1, window=60, refund=True)
    again = model.charge(T0 + 2, 4, key="k")
    assert not again.replayed and model.balance == 6


def test_giving_back_what_would_pass_the_cap_is_refused_and_changes_nothing() -> None:
    model = account(Terms("pay", Period.NONE, 0, True), balance=10)
    charge = model.charge(T0, 10)
    model.grant(CAP)
    assert model.settle(charge.charge, 0, T0 + 1, window=60, refund=True).outcome == "cap"
    assert model.balance == CAP


def test_a_period_restarted_since_a_charge_without_periods_gets_nothing_back() -> None:
    model = account(Terms("once", Period.NONE, 7, True), balance=1)
    charge = model.charge(T0, 1)  # from the allowance of a plan without periods: counted at 0
    model.change_plan(DAILY)  # another length: the period restarts (bounds 0 until the next charge)
    refund = model.settle(charge.charge, 0, T0 + 1, window=60, refund=False)
    assert (refund.outcome, refund.given_back, model.balance, model.used) == ("applied", 0, 1, 0)


def test_a_charge_of_a_daily_period_gives_nothing_back_to_a_plan_without_periods() -> None:
    model = account(balance=1)
    charge = model.charge(T0, 3)  # from the day's allowance
    model.change_plan(Terms("once", Period.NONE, 7, True))  # restarted
    model.charge(T0 + 1, 2)
    refund = model.settle(charge.charge, 0, T0 + 2, window=60, refund=True)
    assert (refund.given_back, model.used) == (0, 2)


# The period's counters


def test_the_period_counts_its_requests_and_where_their_credits_came_from() -> None:
    model = account(balance=20)
    for i, cost in enumerate([4, 4, 0, 5]):
        assert model.charge(T0 + i, cost).allowed
    assert (model.period_requests, model.used, model.period_from_balance) == (4, 10, 3)


def test_a_refusal_a_replay_and_a_new_period_count_nothing_more() -> None:
    model = account(FREE)
    model.charge(T0 + 1, 6, key="k")
    model.charge(T0 + 2, 6, key="k")  # a replay
    assert model.charge(T0 + 3, 5).reason is Refusal.QUOTA_EXHAUSTED
    assert (model.period_requests, model.used, model.period_from_balance) == (1, 6, 0)
    model.charge(T0 + DAY_SECONDS, 1)
    assert (model.period_requests, model.used, model.period_from_balance) == (1, 1, 0)


def test_a_refund_takes_back_its_request_and_its_credits_from_the_counters_that_paid() -> None:
    model = account(balance=20)
    model.charge(T0 + 1, 8)
    second = model.charge(T0 + 2, 5)  # 2 from the allowance, 3 from the balance
    assert second.charge is not None
    assert model.settle(second.charge, 0, T0 + 3, window=60, refund=True).given_back == 5
    assert (model.period_requests, model.used, model.period_from_balance) == (1, 8, 0)
    third = model.charge(T0 + 4, 4)
    assert third.charge is not None
    model.settle(third.charge, 1, T0 + 5, window=60, refund=False)  # settled lower: still a request
    assert (model.period_requests, model.used, model.period_from_balance) == (2, 9, 0)


def test_a_settlement_after_the_period_ended_nets_nothing_from_the_new_one() -> None:
    model = account(balance=20)
    first = model.charge(T0 + 1, 12)
    assert first.charge is not None
    model.charge(T0 + DAY_SECONDS, 11)
    got = model.settle(first.charge, 0, T0 + DAY_SECONDS + 1, window=2 * DAY_SECONDS, refund=True)
    assert (got.given_back, model.balance) == (2, 19)
    assert (model.period_requests, model.used, model.period_from_balance) == (1, 10, 1)


def test_a_pool_members_requests_are_counted_per_period_and_a_refund_takes_one_back() -> None:
    model = account(balance=100)
    first = model.charge(T0 + 1, 3, member="ann")
    model.charge(T0 + 2, 0, member="ann")
    r = model.restarts  # a member's counts name their period: (restarts, period start, n)
    assert first.charge is not None and model.member_requests["ann"] == (r, T0, 2)
    model.settle(first.charge, 0, T0 + 3, window=60, refund=True)
    assert model.member_requests["ann"] == (r, T0, 1) and model.member_use["ann"] == (r, T0, 0)
    model.charge(T0 + DAY_SECONDS, 1, member="ann")
    assert model.member_requests["ann"] == (r, T0 + DAY_SECONDS, 1)


def test_a_restart_between_two_periods_without_bounds_gives_nothing_back_to_the_allowance() -> None:
    once = Terms("once", Period.NONE, 7, True)
    model = account(once, balance=5)
    first = model.charge(T0 + 1, 2)
    assert first.charge is not None and first.from_allowance == 2
    model.change_plan(DAILY)  # another length: a restart
    model.charge(T0 + 2, 1)
    model.change_plan(once)  # back to a plan without periods: bounds 0 again, another restart
    assert (model.period_start, model.period_end, model.restarts) == (0, 0, 3)
    got = model.settle(first.charge, 0, T0 + 3, window=60, refund=True)
    assert (got.given_back, model.used, model.period_requests) == (0, 0, 0)


def test_a_member_capped_in_a_period_is_not_capped_after_a_plan_switch_and_back() -> None:
    """A plan without periods, another plan, then one without periods again: both periods start at
    0, and the member's use of the first is not its use of the last."""
    once = Terms("once", Period.NONE, 7, True)
    model = account(once, balance=20)
    model.set_member_cap("ann", 2)
    assert model.charge(T0 + 1, 2, member="ann").allowed
    assert model.charge(T0 + 2, 1, member="ann").reason is Refusal.MEMBER_CAP_REACHED
    model.change_plan(DAILY)
    model.change_plan(once)
    got = model.charge(T0 + 3, 1, member="ann")
    assert (got.allowed, got.member_used) == (True, 1)
    assert model.member_requests["ann"] == (model.restarts, 0, 1)


def test_a_refund_after_a_switch_and_back_takes_nothing_from_the_members_new_use() -> None:
    once = Terms("once", Period.NONE, 7, True)
    model = account(once, balance=20)
    first = model.charge(T0 + 1, 2, member="ann")
    assert first.charge is not None
    model.change_plan(DAILY)
    model.change_plan(once)
    model.charge(T0 + 2, 3, member="ann")
    model.settle(first.charge, 0, T0 + 3, window=60, refund=True)
    assert model.member_use["ann"] == (model.restarts, 0, 3)
    assert model.member_requests["ann"] == (model.restarts, 0, 1)


# Debt and grace


@given(debt=st.integers(0, CAP), amount=st.integers(-CAP, CAP))
def test_a_credit_pays_the_debt_first_and_a_debit_never_touches_it(debt: int, amount: int) -> None:
    paid, change = pay_debt_first(debt, amount)
    assert paid + change == amount  # nothing lost, nothing made up
    assert 0 <= paid <= debt
    if amount > 0:
        assert paid == min(debt, amount) and change >= 0
    else:
        assert (paid, change) == (0, amount)


def test_pay_debt_first_on_plain_values() -> None:
    assert pay_debt_first(30, 100) == (30, 70)
    assert pay_debt_first(50, 20) == (20, 0)
    assert pay_debt_first(0, 5) == (0, 5)
    assert pay_debt_first(9, -5) == (0, -5)


def test_a_debt_refuses_every_request_after_the_subscriptions_checks_and_records_no_period() -> None:
    model = account(balance=10)
    model.owe(3)
    before = model.copy()
    refused = model.charge(T0 + 1, 0)
    assert (refused.reason, refused.debt, refused.charge) == (Refusal.DEBT_OUTSTANDING, 3, None)
    assert model.history == before.history and model.period_start == before.period_start
    assert model.charge(T0 + 1, 1, entitled=("pro",)).reason is Refusal.PLAN_NOT_ENTITLED
    model.set_status("canceled")
    assert model.charge(T0 + 1, 1).reason is Refusal.SUBSCRIPTION_INACTIVE


def test_a_grant_pays_the_debt_then_the_balance_and_its_entry_is_the_balances_change() -> None:
    model = account(balance=10)
    model.owe(30)
    partly = model.grant(20, "g")
    assert (partly.debt_paid, partly.debt, partly.balance) == (20, 10, 10)
    assert model.history[-1].amount == 0 and model.replay() == model.balance
    assert model.grant(20, "g").outcome == "already"  # the key answers for the 20 asked, not the 0 moved
    assert model.grant(25).debt_paid == 10 and model.balance == 25
    assert model.charge(T0 + 1, 1).allowed


def test_a_grant_that_pays_debt_is_held_to_the_cap_by_what_the_balance_gets() -> None:
    model = account(balance=10)
    model.owe(10)
    assert model.grant(CAP).outcome == "applied" and model.balance == CAP
    assert model.adjust_down(CAP + 1).outcome == "refused" and model.debt == 0


def test_past_due_is_charged_until_its_grace_ends() -> None:
    model = account(balance=10)
    model.set_status("past_due")
    assert model.charge(T0 + 1, 1).reason is Refusal.SUBSCRIPTION_INACTIVE
    model.set_grace(T0 + 10)
    assert model.charge(T0 + 9, 1).allowed
    assert model.charge(T0 + 10, 1).reason is Refusal.SUBSCRIPTION_INACTIVE
    model.set_status("suspended")
    assert model.charge(T0 + 9, 1).reason is Refusal.SUBSCRIPTION_INACTIVE  # a grace is past_due's only
