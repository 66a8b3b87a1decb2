"""payment.lua and payment_route.lua against core/payments.py, on a real Redis.

Generated histories of payments and their reversals (each event shuffled, sent twice, delayed before
its payment, statuses moving forward and back) are applied both to the plain model and through the
two scripts; after every step the account's balance, debt and frozen credits, and each payment's
credits taken and held, are the model's, and the ledger adds up to the balance.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creditgate.core import payments as rules
from creditgate.core.model import MAX_CREDITS
from creditgate.core.payments import DISPUTE, RANK, REFUND, REFUNDED_TOTAL, Reversal
from creditgate.errors import StoreDataError
from creditgate.store import payments
from creditgate.store.replies import as_text
from creditgate.store.store import RedisStore

ACCOUNT = "acme"


def send(
    store: RedisStore,
    refs: list[str],
    *,
    account: str = "",
    pay: tuple[int, str, int] | None = None,
    reversals: Sequence[Reversal] = (),
    now: int = 1_000,
) -> tuple[payments.Route, payments.PaymentApplied | None]:
    """One event through both steps, as the service does."""
    found = payments.route(store, refs, account if pay is not None else "", list(reversals))
    if found.state != "owned":
        return found, None
    applied = payments.apply(
        store, found.account, found.key, now=now, pay=pay, reversals=list(reversals), waiting=found.waiting
    )
    payments.settled(store, found.key)
    return found, applied


def account_money(store: RedisStore, account: str = ACCOUNT) -> tuple[int, int, int]:
    client: Any = store.client
    balance, debt, frozen = (
        int(as_text(v)) if v is not None else 0
        for v in client.hmget(store.keys.account(account).state, "balance", "debt", "frozen")
    )
    return balance, debt, frozen


def ledger_sum(store: RedisStore, account: str = ACCOUNT) -> int:
    client: Any = store.client
    keys = store.keys.account(account)
    base = client.hget(keys.state, "ledger_base")
    entries = client.xrange(keys.ledger)
    return int(as_text(base) if base else 0) + sum(int(as_text(f[b"amount"])) for _, f in entries)


def test_a_payment_grants_once_whatever_reference_names_it(store: RedisStore) -> None:
    _, first = send(store, ["cs_1", "pi_1"], account=ACCOUNT, pay=(2900, "usd", 10_000))
    assert first is not None and first.granted == 10_000
    _, again = send(store, ["in_1", "pi_1"], account=ACCOUNT, pay=(2900, "usd", 10_000))
    assert again is not None and (again.outcome, again.granted) == ("unchanged", 0)
    assert account_money(store) == (10_000, 0, 0)


def test_a_refund_before_its_payment_waits_and_is_applied_when_it_arrives(store: RedisStore) -> None:
    refund = Reversal("re_1", REFUND, 1450, "succeeded", 5)
    found, _ = send(store, ["pi_1", "ch_1"], reversals=[refund])
    assert found.state == "waiting"
    _, applied = send(store, ["cs_1", "pi_1"], account=ACCOUNT, pay=(2900, "usd", 10_000))
    assert applied is not None and (applied.granted, applied.taken) == (10_000, 5_000)
    assert account_money(store) == (5_000, 0, 0)
    assert ledger_sum(store) == 5_000


def test_a_reversal_after_spending_leaves_a_debt_the_next_credit_pays(store: RedisStore) -> None:
    send(store, ["pi_1"], account=ACCOUNT, pay=(1000, "usd", 10_000))
    store.client.hset(store.keys.account(ACCOUNT).state, "balance", "1")  # 9,999 spent
    _, lost = send(store, ["pi_1"], reversals=[Reversal("dp_1", DISPUTE, 1000, "lost")])
    assert lost is not None and lost.taken == 10_000
    assert account_money(store) == (0, 9_999, 0)
    send(store, ["pi_2"], account=ACCOUNT, pay=(2000, "usd", 20_000))
    assert account_money(store) == (10_001, 0, 0)


def test_an_open_dispute_freezes_and_a_won_one_releases(store: RedisStore) -> None:
    send(store, ["pi_1"], account=ACCOUNT, pay=(1000, "usd", 10_000))
    send(store, ["pi_1"], reversals=[Reversal("dp_1", DISPUTE, 500, "needs_response")])
    assert account_money(store) == (5_000, 0, 5_000)
    send(store, ["pi_1"], reversals=[Reversal("dp_1", DISPUTE, 500, "won")])
    assert account_money(store) == (10_000, 0, 0)
    # An older event arriving late changes nothing.
    _, late = send(store, ["pi_1"], reversals=[Reversal("dp_1", DISPUTE, 500, "under_review")])
    assert late is not None and late.outcome == "unchanged"
    assert account_money(store) == (10_000, 0, 0)


def test_an_inquiry_takes_nothing(store: RedisStore) -> None:
    send(store, ["pi_1"], account=ACCOUNT, pay=(1000, "usd", 10_000))
    send(store, ["pi_1"], reversals=[Reversal("dp_1", DISPUTE, 1000, "warning_needs_response")])
    send(store, ["pi_1"], reversals=[Reversal("dp_1", DISPUTE, 1000, "warning_closed")])
    assert account_money(store) == (10_000, 0, 0)


def test_a_failed_refund_gives_back_what_it_took(store: RedisStore) -> None:
    send(store, ["pi_1"], account=ACCOUNT, pay=(1000, "usd", 10_000))
    send(store, ["pi_1"], reversals=[Reversal("re_1", REFUND, 300, "pending", 7)])
    assert account_money(store) == (7_000, 0, 0)
    send(store, ["pi_1"], reversals=[Reversal("re_1", REFUND, 300, "failed", 7)])
    assert account_money(store) == (10_000, 0, 0)
    send(store, ["pi_1"], reversals=[Reversal("re_1", REFUND, 300, "succeeded", 7)])  # older: ignored
    assert account_money(store) == (10_000, 0, 0)


def test_references_of_two_accounts_are_a_conflict_and_change_nothing(store: RedisStore) -> None:
    send(store, ["pi_1"], account=ACCOUNT, pay=(1000, "usd", 10_000))
    found, applied = send(store, ["pi_1"], account="other", pay=(1000, "usd", 10_000))
    assert (found.state, found.account, applied) == ("conflict", ACCOUNT, None)


def test_garbage_in_a_payment_record_is_bad_data_and_nothing_is_written(store: RedisStore) -> None:
    send(store, ["pi_1"], account=ACCOUNT, pay=(1000, "usd", 10_000))
    keys = store.keys.account(ACCOUNT)
    store.client.hset(keys.payments, "pi_1", '{"granted":"1","paid":"1e3","reversals":{}}')
    before = account_money(store)
    with pytest.raises(StoreDataError):
        send(store, ["pi_1"], reversals=[Reversal("re_1", REFUND, 300, "succeeded", 7)])
    assert account_money(store) == before


def test_partial_refunds_add_up_to_the_whole_exactly(store: RedisStore) -> None:
    send(store, ["pi_1"], account=ACCOUNT, pay=(3, "usd", 10))
    for i in range(3):
        send(store, ["pi_1"], reversals=[Reversal(f"re_{i}", REFUND, 1, "succeeded", i)])
    assert account_money(store) == (0, 0, 0)


def test_large_amounts_stay_exact(store: RedisStore) -> None:
    paid, credits = rules.MAX_AMOUNT - 7, MAX_CREDITS - 3
    send(store, ["pi_1"], account=ACCOUNT, pay=(paid, "usd", credits))
    part = paid // 3 + 11
    _, applied = send(store, ["pi_1"], reversals=[Reversal("re_1", REFUND, part, "succeeded", 1)])
    assert applied is not None and applied.taken == credits * part // paid


# Generated histories ---------------------------------------------------------------------------------

STATUSES = {kind: sorted(RANK[kind]) for kind in (REFUND, DISPUTE)}


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, object]]:
    """Events of up to three payments of one account: each payment's event, reversals with statuses in
    any order, refunded totals, duplicates; the whole shuffled."""
    events: list[tuple[str, object]] = []
    for p in range(draw(st.integers(1, 3))):
        paid = draw(st.integers(0, 10_000))
        credits = draw(st.integers(0, 50_000))
        refs = [f"pi_{p}", f"in_{p}"]
        events.append(("pay", (refs, (paid, "usd", credits))))
        for r in range(draw(st.integers(0, 4))):
            kind = draw(st.sampled_from([REFUND, DISPUTE, REFUNDED_TOTAL]))
            amount = draw(st.integers(1, max(paid, 1) + 5))
            for step in range(draw(st.integers(1, 3))):
                if kind == REFUNDED_TOTAL:
                    reversal = Reversal(REFUNDED_TOTAL, kind, amount + step, "", draw(st.integers(1, 50)))
                else:
                    status = draw(st.sampled_from(STATUSES[kind]))
                    reversal = Reversal(f"{kind}_{p}_{r}", kind, amount, status, draw(st.integers(1, 50)))
                ref = draw(st.sampled_from(refs))
                events.append(("reverse", ([ref], reversal)))
    seed = draw(st.integers(0, 2**32))
    rng = random.Random(seed)
    events += [rng.choice(events) for _ in range(draw(st.integers(0, 3)))]  # duplicates
    rng.shuffle(events)
    return events


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories())
def test_generated_histories_agree_with_the_model(
    store: RedisStore, history: list[tuple[str, object]]
) -> None:
    store.client.flushdb()
    model_account = rules.Account()
    model_payments: dict[str, rules.Payment] = {}
    waiting: dict[str, list[Reversal]] = {}
    for kind, body in history:
        if kind == "pay":
            refs, pay = cast(tuple[list[str], tuple[int, str, int]], body)
            key = refs[0]
            payment = model_payments.setdefault(key, rules.Payment(key))
            rules.apply_event(model_account, payment, pay=pay, reversals=waiting.pop(key, []))
            send(store, list(refs), account=ACCOUNT, pay=pay)
        else:
            refs, reversal = cast(tuple[list[str], Reversal], body)
            key = "pi_" + refs[0].split("_")[1]
            if key in model_payments:
                rules.apply_event(model_account, model_payments[key], reversals=[reversal])
            else:
                waiting.setdefault(key, []).append(reversal)
            send(store, list(refs), reversals=[reversal])
        assert account_money(store) == (model_account.balance, model_account.debt, model_account.frozen)
        for key, model in model_payments.items():
            canonical = as_text(store.client.get(store.keys.payment_refs + key))
            record = payments.payment(store, ACCOUNT, canonical)
            assert record is not None and (record.taken, record.held) == (model.taken, model.held)
            # Credits follow money: what the payment still yields is its share of what was not reversed.
            gone, _held = rules.reversed_and_held(model.paid, model.reversals)
            assert model.taken == rules.share(model.credits, gone, model.paid)
        assert ledger_sum(store) == model_account.balance


def test_a_payment_the_version_before_granted_is_adopted_not_granted_again(store: RedisStore) -> None:
    """Records of the version before: a refund after the upgrade finds the payment, takes its share once,
    and what the old code took for a dispute itself is given back when the dispute is won."""
    import json

    keys = store.keys.account(ACCOUNT)
    store.client.hset(keys.state, "balance", "0")
    record = json.dumps({"account": ACCOUNT, "credits": 10_000, "amount": 1000})
    store.client.hset(store.keys.stripe_payments, mapping={"pi_old": record, "ch_old": record})
    # The old code took the whole payment back for an open dispute, with its own key.
    store.client.hset(keys.idempotency, "stripe:dispute:dp_old", "1-1 adjust -10000")
    found = payments.route(store, ["pi_old"], ACCOUNT, ())
    payments.apply(store, ACCOUNT, found.key, now=1, pay=(1000, "", 10_000), adopt=True)
    assert account_money(store) == (0, 0, 0)  # adopted: nothing granted again
    _, won = send(store, ["pi_old"], reversals=[Reversal("dp_old", DISPUTE, 1000, "won")])
    assert won is not None and account_money(store) == (10_000, 0, 0)
