"""The plan index (the accounts of each plan) under concurrent plan and subscription changes.

Whatever order two changes of one account run in, once both have returned the account is in the
index of the plan its hash names and in no other: a plan's new terms reach it, and the plan cannot be
deleted from under it without --force. Run against one Redis and against a 3-master Redis Cluster,
where the index sets and the account live on different slots.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.errors import Conflict
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.store.test_redis_topologies import cluster_admin  # noqa: F401  (a fixture)

pytestmark = pytest.mark.server  # the session's Redis Cluster (tests/conftest.py)

PLANS = ("alpha", "beta")
Moves = Callable[[str], list[Callable[[], object]]]
ROUNDS = 60


def plans(admin: Admin) -> None:
    admin.apply_plan(Plan("alpha", period=Period.MONTH, allowance=100))
    admin.apply_plan(Plan("beta", period=Period.MONTH, allowance=50))


def indexed_in(store: RedisStore, account: str) -> list[str]:
    return [name for name in PLANS if account in store.plan_accounts(name)]


def race(*moves: Callable[[], object]) -> None:
    """Run the moves at once, each in its own thread, and wait for all of them."""
    barrier = threading.Barrier(len(moves))
    errors: list[BaseException] = []

    def run(move: Callable[[], object]) -> None:
        barrier.wait()
        try:
            move()
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(move,)) for move in moves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def check_index_follows_racing_changes(
    admin: Admin, moves: Callable[[str], list[Callable[[], object]]]
) -> None:
    plans(admin)
    admin.subscribe("acme", "alpha")
    for _ in range(ROUNDS):
        race(*moves("acme"))
        current = admin.account("acme").plan
        assert indexed_in(admin.store, "acme") == [current]

    current = admin.account("acme").plan
    cut = Plan(current, period=Period.MONTH, allowance=7)
    assert admin.apply_plan(cut) == ["acme"]
    assert admin.account("acme").allowance == 7
    with pytest.raises(Conflict, match="used by 1 account"):
        admin.delete_plan(current)


def changes(admin: Admin) -> Moves:
    return lambda account: [
        lambda: admin.change_plan(account, "beta"),
        lambda: admin.change_plan(account, "alpha"),
    ]


def subscriptions(admin: Admin) -> Moves:
    return lambda account: [
        lambda: admin.subscribe(account, "beta"),
        lambda: admin.change_plan(account, "alpha"),
        lambda: admin.import_account(account, plan="beta"),
    ]


@pytest.mark.parametrize("kind", [changes, subscriptions], ids=["change_plan", "subscribe_and_import"])
def test_racing_plan_changes_leave_the_account_in_exactly_its_plans_index(
    admin: Admin, kind: Callable[[Admin], Moves]
) -> None:
    check_index_follows_racing_changes(admin, kind(admin))


@pytest.mark.parametrize("kind", [changes, subscriptions], ids=["change_plan", "subscribe_and_import"])
def test_racing_plan_changes_on_a_cluster_leave_the_account_in_exactly_its_plans_index(
    cluster_admin: Admin,  # noqa: F811  (the fixture imported above)
    kind: Callable[[Admin], Moves],
) -> None:
    check_index_follows_racing_changes(cluster_admin, kind(cluster_admin))


def test_a_change_that_finds_no_subscription_leaves_no_index_entry(admin: Admin) -> None:
    plans(admin)
    with pytest.raises(Exception, match="no subscription"):
        admin.change_plan("ghost", "beta")
    assert indexed_in(admin.store, "ghost") == []
