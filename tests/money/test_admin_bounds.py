"""What the operators' API accepts: times in seconds, balances within the exact bound, and plan terms
that a racing sign-up cannot leave stale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from creditgate.core.model import MAX_CREDITS, MAX_INSTANT, Plan
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.errors import Conflict, InvalidDocument, StoreDataError
from creditgate.ops.admin import Admin
from creditgate.ops.importer import import_csv
from creditgate.store.store import RedisStore, _script_source
from tests.conftest import Clock


def test_lua_and_python_declare_the_same_bounds() -> None:
    lib = _script_source("charge")
    assert f"local MAX_CREDITS = {MAX_CREDITS}" in lib
    assert f"local MAX_INSTANT = {MAX_INSTANT}" in lib


# An anchor in milliseconds: accepted before, the charge went through, then formatting the period's
# end raised and the client got 500 "nothing was charged" with the credits gone.


@pytest.mark.parametrize("field", ["starts_at", "anchor", "expires_at"])
def test_a_time_in_milliseconds_is_refused_by_the_api(admin: Admin, clock: Clock, field: str) -> None:
    admin.apply_plan(Plan("pro"))
    times: dict[str, Any] = {"starts_at": clock.now, field: clock.now * 1000}
    with pytest.raises(InvalidDocument, match=field):
        admin.subscribe("acme", "pro", **times)


def test_a_time_in_milliseconds_is_refused_by_the_import(admin: Admin, clock: Clock, tmp_path: Path) -> None:
    admin.apply_plan(Plan("pro"))
    path = tmp_path / "accounts.csv"
    path.write_text(f"account,plan,starts_at,anchor\nacme,pro,{clock.now},{clock.now * 1000}\n")
    report = import_csv(admin, path)
    assert report.applied == 0 and "anchor" in report.rejected[0].error
    assert not admin.store.account_state("acme").exists


def test_an_anchor_in_milliseconds_written_into_redis_is_refused_with_nothing_charged(
    admin: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock
) -> None:
    admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=0, prepaid=True))
    admin.subscribe("acme", "pro", starts_at=clock.now - 60)
    admin.grant("acme", 100)
    redis_client.hset(store.keys.account("acme").state, mapping={"anchor": clock.now * 1000, "period_end": 0})
    with pytest.raises(StoreDataError):
        store.charge(ChargeRequest("acme", 10, now=clock.now))
    assert store.account_state("acme").balance == 100


# Balances stay within MAX_CREDITS: past 2^53 the ledger's balance-after and the CLI's message were
# wrong, and a folded ledger no longer replayed.


def test_a_grant_past_the_bound_is_refused_and_nothing_changes(admin: Admin, store: RedisStore) -> None:
    admin.grant("acme", MAX_CREDITS - 5)
    with pytest.raises(Conflict, match="would pass"):
        admin.grant("acme", 6)
    assert store.account_state("acme").balance == MAX_CREDITS - 5
    result = admin.grant("acme", 5)
    assert result.balance == MAX_CREDITS
    assert admin.verify_ledger("acme").ok


def test_the_credit_script_refuses_past_the_bound_whatever_the_caller(
    store: RedisStore, clock: Clock
) -> None:
    store.credit("acme", "grant", MAX_CREDITS, now=clock.now)
    from creditgate.errors import BalanceCapReached

    with pytest.raises(BalanceCapReached):
        store.credit("acme", "adjust", 1, now=clock.now)
    assert store.account_state("acme").balance == MAX_CREDITS


def test_an_import_grant_past_the_bound_is_refused_with_nothing_written(
    admin: Admin, store: RedisStore, clock: Clock, tmp_path: Path
) -> None:
    admin.apply_plan(Plan("pro"))
    admin.grant("acme", MAX_CREDITS)
    path = tmp_path / "accounts.csv"
    path.write_text("account,plan,balance,key\nacme,pro,1,topup-1\n")
    report = import_csv(admin, path)
    assert report.applied == 0 and "would pass" in report.rejected[0].error
    state = store.account_state("acme")
    assert (state.balance, state.plan) == (MAX_CREDITS, "")


def test_large_balances_fold_into_a_ledger_that_replays_exactly(admin: Admin, store: RedisStore) -> None:
    admin.ledger_retention = 3
    for i in range(60):
        admin.grant("acme", MAX_CREDITS - 1 - i)
        admin.adjust_down("acme", MAX_CREDITS - 1 - i)
    admin.grant("acme", 7)
    check = admin.verify_ledger("acme")
    assert check.ok and check.balance == 7 and check.entries <= 3 + 1


# A sign-up racing a plan change: the sign-up read the old terms, the plan changed before the account
# was in the plan's index, and the account kept the old terms for good.


class RacingStore:
    """The real store, with a plan change by another operator slipped in right after a plan is read."""

    def __init__(self, store: RedisStore, other: Admin, new_terms: Plan) -> None:
        self._store, self._other, self._new = store, other, new_terms
        self.raced = False

    def get_plan(self, name: str) -> Plan | None:
        plan = self._store.get_plan(name)
        if not self.raced:
            self.raced = True
            self._other.apply_plan(self._new)
        return plan

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.parametrize("operation", ["subscribe", "import", "change_plan"])
def test_a_sign_up_racing_a_plan_change_ends_on_the_new_terms(
    store: RedisStore, clock: Clock, operation: str
) -> None:
    other = Admin(store, clock=clock)
    other.apply_plan(Plan("free", period=Period.MONTH, allowance=10, prepaid=False))
    other.apply_plan(Plan("basic", period=Period.MONTH, allowance=1, prepaid=False))
    new_terms = Plan("free", period=Period.MONTH, allowance=1_000, prepaid=False)
    racing = Admin(RacingStore(store, other, new_terms), clock=clock)  # type: ignore[arg-type]
    if operation == "subscribe":
        racing.subscribe("acme", "free")
    elif operation == "import":
        racing.import_account("acme", plan="free")
    else:
        other.subscribe("acme", "basic")
        racing.change_plan("acme", "free")
    assert store.account_state("acme").allowance == 1_000
