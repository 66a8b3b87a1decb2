"""The ledger's retention bounds every script's work, and never what can be settled or refunded.

Folding old entries into ``ledger_base`` takes at most a fixed number of entries per call (a lowered
retention, or the schema's largest, is caught up over the following writes); a hold's facts are kept
in the account's holds hash for its settlement window, so settling does not need its ledger entry.
"""

from __future__ import annotations

import itertools

import pytest
import redis

from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.store.replies import request_key_input
from creditgate.store.store import RedisStore
from tests.conftest import Clock

FOLD_MAX = 256  # _lib.lua


@pytest.fixture
def prepaid(admin: Admin, clock: Clock) -> Admin:
    admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=0, prepaid=True))
    admin.subscribe("acme", "pro", starts_at=clock.now - 60)
    return admin


def test_a_charge_folds_a_bounded_number_of_entries_however_long_the_ledger(
    prepaid: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock
) -> None:
    keys = store.keys.account("acme")
    pipe = redis_client.pipeline(transaction=False)
    for _ in range(20_000):
        pipe.xadd(keys.ledger, {"kind": "grant", "amount": "1", "balance": "0"})
    pipe.hset(keys.state, "balance", 20_000)
    pipe.execute()
    lengths = [redis_client.xlen(keys.ledger)]
    for _ in range(5):
        assert store.charge(ChargeRequest("acme", 1, now=clock.now, ledger_retention=100)).allowed
        lengths.append(redis_client.xlen(keys.ledger))
    # Each call appends one entry and folds at most FOLD_MAX: never the 19,900 entries at once.
    assert all(0 < before + 1 - after <= FOLD_MAX for before, after in itertools.pairwise(lengths))
    assert prepaid.verify_ledger("acme").ok
    while redis_client.xlen(keys.ledger) > 100 + 6:
        store.charge(ChargeRequest("acme", 1, now=clock.now, ledger_retention=100))
    check = prepaid.verify_ledger("acme")
    assert check.ok and check.entries <= 106


def test_a_hold_is_settled_after_its_charge_left_the_ledger(
    prepaid: Admin, store: RedisStore, clock: Clock
) -> None:
    prepaid.grant("acme", 10_000)
    hold = store.charge(
        ChargeRequest(
            "acme", 500, now=clock.now, ledger_retention=100, hold_seconds=600, settle_window=86_400
        )
    )
    for i in range(300):  # the charge's entry is folded away
        assert store.charge(
            ChargeRequest("acme", 1, now=clock.now + 1 + i // 100, ledger_retention=100)
        ).allowed
    assert hold.charge_id not in {e.id for e in store.ledger("acme")}
    settled = store.settle(
        "acme", hold.charge_id, 3, now=clock.now + 10, window_seconds=600, ledger_retention=100
    )
    assert (settled.outcome, settled.given_back) == ("applied", 497)
    assert store.account_state("acme").balance == 10_000 - 3 - 300
    again = store.settle("acme", hold.charge_id, 3, now=clock.now + 11, window_seconds=600)
    assert again.outcome == "already"
    assert prepaid.verify_ledger("acme").ok


def test_a_refund_after_the_charge_left_the_ledger_gives_back_once(
    prepaid: Admin, store: RedisStore, clock: Clock
) -> None:
    prepaid.grant("acme", 1_000)
    paid = store.charge(ChargeRequest("acme", 40, now=clock.now, ledger_retention=20, settle_window=86_400))
    for _ in range(60):
        store.charge(ChargeRequest("acme", 1, now=clock.now + 1, ledger_retention=20))
    refund = store.settle(
        "acme", paid.charge_id, 0, now=clock.now + 5, refund=True, window_seconds=86_400, ledger_retention=20
    )
    assert (refund.outcome, refund.given_back) == ("applied", 40)
    assert store.account_state("acme").balance == 1_000 - 60
    assert prepaid.verify_ledger("acme").ok


def test_expired_holds_are_dropped_a_few_per_charge(
    prepaid: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock
) -> None:
    prepaid.grant("acme", 1_000)
    for _ in range(20):
        store.charge(ChargeRequest("acme", 1, now=clock.now, settle_window=60))
    holds = store.keys.account("acme").holds
    assert redis_client.hlen(holds) == 20
    store.charge(ChargeRequest("acme", 1, now=clock.now + 120, settle_window=60))
    assert redis_client.hlen(holds) == 20 - 8 + 1
    assert 0 < redis_client.ttl(holds) <= 120


def test_a_refund_after_the_period_restarted_gives_nothing_back_to_the_new_allowance(
    admin: Admin, store: RedisStore, clock: Clock
) -> None:
    admin.apply_plan(Plan("daily", period=Period.DAY, allowance=10, prepaid=True))
    admin.subscribe("acme", "daily", starts_at=clock.now - 60)
    admin.grant("acme", 3)
    paid = store.charge(ChargeRequest("acme", 7, now=clock.now, settle_window=86_400))  # from the allowance
    admin.subscribe("acme", "daily", starts_at=clock.now - 60, anchor=clock.now - 30)  # a new period
    refund = store.settle("acme", paid.charge_id, 0, now=clock.now + 5, refund=True, window_seconds=86_400)
    assert (refund.outcome, refund.given_back, refund.balance) == ("applied", 0, 3)
    assert store.account_state("acme").used == 0


@pytest.mark.parametrize("spelling", ["0{ms}-{seq}", "{ms}-0{seq}", "00{ms}-00{seq}"])
def test_a_charge_id_spelt_with_leading_zeros_is_unknown_and_cannot_settle_it_again(
    prepaid: Admin, store: RedisStore, clock: Clock, spelling: str
) -> None:
    """Redis reads "01-0" as the stream id 1-0, but the settlement marker is named after the id as
    given: another spelling of a settled charge's id would find its ledger entry and settle it again."""
    prepaid.grant("acme", 100)
    paid = store.charge(ChargeRequest("acme", 7, now=clock.now, settle_window=86_400))
    first = store.settle("acme", paid.charge_id, 0, now=clock.now + 1, refund=True, window_seconds=86_400)
    assert (first.outcome, first.given_back) == ("applied", 7)
    ms, seq = paid.charge_id.split("-")
    other = spelling.format(ms=ms, seq=seq)
    again = store.settle("acme", other, 0, now=clock.now + 2, refund=True, window_seconds=86_400)
    assert (again.outcome, again.given_back, again.balance) == ("unknown", 0, 100)
    assert store.account_state("acme").balance == 100
    assert prepaid.verify_ledger("acme").ok


def test_a_refund_leaves_an_idempotency_key_that_a_later_charge_took_over(
    prepaid: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock
) -> None:
    """The key expired while the first request was in flight and its retry was charged under it: the
    first request's refund must not release the retry's charge, or a third try is charged again."""
    prepaid.grant("acme", 100)

    def send(now: int) -> str:
        request = ChargeRequest(
            "acme", 10, now=now, idempotency_key="order-7", idempotency_window=60, settle_window=86_400
        )
        got = store.charge(request)
        assert got.allowed
        return got.charge_id

    first = send(clock.now)
    key = store.keys.account("acme").request(request_key_input("global", 10, "order-7", ""))
    assert redis_client.get(key) == first.encode()
    redis_client.delete(key)  # its idempotency window is over
    retry = send(clock.now + 70)
    refund = store.settle("acme", first, 0, now=clock.now + 90, refund=True, window_seconds=86_400)
    assert (refund.outcome, refund.given_back) == ("applied", 10)
    assert redis_client.get(key) == retry.encode()
    assert send(clock.now + 95) == retry  # a replay of the retry, not a third charge
    assert store.account_state("acme").balance == 90
