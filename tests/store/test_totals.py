"""The day's totals over every account (store/totals.py), against real Redis: what the charge and settle
scripts count into them is what the accounts' own usage hashes hold, added up; the ranking of the most
charged accounts is a plain ranking; days counted before the totals existed, and a Cluster's slots, are
made whole once the day is over; garbage in the totals never costs a charge more than a BADDATA."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from creditgate.core.config import RedisSettings
from creditgate.core.decision import Reason
from creditgate.core.inputs import format_instant
from creditgate.core.model import Plan, Status
from creditgate.core.periods import DAY_SECONDS, Period
from creditgate.core.policy import ChargeRequest
from creditgate.errors import StoreDataError
from creditgate.ops.admin import Admin
from creditgate.store import totals as totals_module
from creditgate.store.keys import day_name, slot_totals_prefix, totals_meta, totals_prefix
from creditgate.store.replies import as_text
from creditgate.store.store import RedisStore
from creditgate.store.totals import CLOSED_AFTER, Day, Totals
from tests.conftest import Clock
from tests.redis_servers import RedisClusterServers
from tests.service_support import READ_TOKEN, running_service
from tests.store.test_redis_topologies import cluster_admin, slot_owners  # noqa: F401  (a fixture)

pytestmark = pytest.mark.server  # the session's Redis Cluster (tests/conftest.py)

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
D = DAY_SECONDS
OVER = D + CLOSED_AFTER  # after a day's start: the day is over for the totals
PRO = Plan("pro", period=Period.NONE, allowance=0, prepaid=True)


# What the totals must hold, from the accounts' own usage hashes.


def own_counters(store: RedisStore, account: str, day: int) -> dict[str, int]:
    """The account's counters of the day, a pool member's own left out (the pool's count them)."""
    return {name: value for name, value in store.usage(account, day).items() if "|member:" not in name}


def summed(store: RedisStore, accounts: Sequence[str], day: int) -> dict[str, int]:
    total: Counter[str] = Counter()
    for account in accounts:
        total.update(own_counters(store, account, day))
    return dict(total)


def credits_by_account(store: RedisStore, accounts: Sequence[str], day: int) -> dict[str, int]:
    """account -> credits charged on the day, for the accounts counted on it (0: counted, nothing charged)."""
    out = {}
    for account in accounts:
        counters = own_counters(store, account, day)
        if counters:
            out[account] = sum(v for name, v in counters.items() if name.endswith("|credits"))
    return out


def ranking(credits: dict[str, int], count: int) -> list[tuple[str, int]]:
    """The plain ranking: credits down, then name, for the accounts charged; then the others by name."""
    charged = sorted(((n, c) for n, c in credits.items() if c > 0), key=lambda item: (-item[1], item[0]))
    return (charged + [(n, 0) for n in sorted(n for n, c in credits.items() if c == 0)])[:count]


def assert_ranked_as(listed: list[tuple[str, int]], credits: dict[str, int], count: int) -> None:
    """``listed`` is the ranking of ``credits`` but for which of equal totals fill the last place."""
    expected = ranking(credits, count)
    assert sorted(c for _, c in listed) == sorted(c for _, c in expected), (listed, expected)
    assert all(credits[name] == c for name, c in listed), (listed, credits)
    assert len({name for name, _ in listed}) == len(listed)
    assert listed == sorted(listed, key=lambda item: (-item[1], item[0]))
    last = expected[-1][1] if expected else 0
    assert [e for e in listed if e[1] != last] == [e for e in expected if e[1] != last]


def read(store: RedisStore, starts: Sequence[int], now: int) -> tuple[list[Day], list[dict[str, int]]]:
    totals = Totals(store)
    days = totals.days(starts, now)
    return days, totals.counters(days)


def sorted_set(client: Any, key: str) -> dict[str, int]:
    return {name.decode(): int(score) for name, score in client.zrange(key, 0, -1, withscores=True)}


def meta(store: RedisStore) -> dict[str, str]:
    raw = store.client.hgetall(totals_meta(store.keys.prefix))
    return {as_text(k): as_text(v) for k, v in raw.items()}


def global_key(store: RedisStore, day: int) -> str:
    return totals_prefix(store.keys.prefix) + day_name(day)


# 1. Every way a request is counted.

ACCOUNTS = ("acme", "globex", "hooli", "initech", "pool", "umbrella")


def charge_every_way(admin: Admin, store: RedisStore) -> None:
    """Charges allowed, refused for each reason, replayed, in shadow mode and by a pool member, a
    refund and a settlement, on two days (T0 and T0 + D)."""
    admin.apply_plan(PRO)
    admin.apply_plan(Plan("capped", period=Period.DAY, allowance=3, prepaid=False))
    for account in ("acme", "globex", "initech", "pool"):
        admin.subscribe(account, "pro", starts_at=T0 - D)
    admin.subscribe("umbrella", "capped", starts_at=T0 - D)
    for account, amount in (("acme", 100), ("globex", 5), ("pool", 50), ("hooli", 9)):
        admin.grant(account, amount)  # hooli: an account with no subscription
    admin.set_status("initech", Status.SUSPENDED)
    admin.set_member_cap("pool", "bob", 1)

    def charge(account: str, cost: int, at: int, **options: Any) -> Any:
        return store.charge(ChargeRequest(account, cost, now=at, **options))

    search, export = {"route": "route:search"}, {"route": "route:export"}
    assert charge("acme", 5, T0 + 1, **search).allowed
    keyed = {"idempotency_key": "k1", "idempotency_window": 3600, **search}
    first = charge("acme", 3, T0 + 2, **keyed)
    assert charge("acme", 3, T0 + 3, **keyed).replayed and first.allowed
    assert charge("acme", 500, T0 + 4, **search).reason is Reason.INSUFFICIENT_CREDIT
    assert charge("acme", 1, T0 + 5, entitled=("enterprise",), **search).reason is Reason.PLAN_NOT_ENTITLED
    refunded = charge("acme", 4, T0 + 6, settle_window=D, **export)
    assert store.settle("acme", refunded.charge_id, 0, now=T0 + 7, refund=True, window_seconds=D).outcome == (
        "applied"
    )
    held = charge("acme", 6, T0 + D - 30, hold_seconds=60, settle_window=D, **export)
    assert charge("globex", 2, T0 + 8, shadow=True, **search).allowed
    assert charge("globex", 50, T0 + 9, shadow=True, **search).reason is Reason.INSUFFICIENT_CREDIT
    assert charge("hooli", 1, T0 + 10).reason is Reason.NO_SUBSCRIPTION
    assert charge("initech", 1, T0 + 11, **search).reason is Reason.SUBSCRIPTION_INACTIVE
    assert charge("pool", 4, T0 + 12, member="alice", **export).allowed
    assert charge("pool", 2, T0 + 13, member="bob", **export).reason is Reason.MEMBER_CAP_REACHED
    assert charge("umbrella", 2, T0 + 14).allowed
    assert charge("umbrella", 2, T0 + 15).reason is Reason.QUOTA_EXHAUSTED
    # The next day: the held charge settled lower, more charges (one of no cost).
    assert store.settle("acme", held.charge_id, 2, now=T0 + D + 10, window_seconds=D).given_back == 4
    assert charge("acme", 7, T0 + D + 20, **search).allowed
    assert charge("globex", 1, T0 + D + 21, **search).allowed
    assert charge("globex", 0, T0 + D + 22, **export).allowed
    assert charge("pool", 1, T0 + D + 23, member="alice", **search).allowed


def test_the_days_totals_are_the_sum_of_every_accounts_own_counters(admin: Admin, store: RedisStore) -> None:
    charge_every_way(admin, store)
    first_day = own_counters(store, "acme", T0)
    # What the case is about is in the accounts' hashes: a replay, a refund, refusals by reason, shadow
    # mode, a settlement the next day, and a pool member's own rows (which the totals leave out).
    assert first_day["route:search|replayed"] == 1 and first_day["route:export|refunded"] == 4
    assert own_counters(store, "acme", T0 + D)["route:export|settled_back"] == 4
    assert store.usage("pool", T0)["route:export|member:alice|credits"] == 4
    assert store.usage("globex", T0)["route:search|shadow_refused:insufficient_credit"] == 1
    for now in (T0 + D + 60, T0 + D + OVER):  # the second day counting, then over
        days, counters = read(store, [T0, T0 + D], now)
        for day, held in zip(days, counters, strict=True):
            assert held == summed(store, ACCOUNTS, day.start), day_name(day.start)
            assert sorted_set(store.client, day.key + ":accounts") == credits_by_account(
                store, ACCOUNTS, day.start
            )
    assert sorted_set(store.client, global_key(store, T0) + ":accounts") == {
        "acme": 5 + 3 + 4 + 6,  # charged: what was refunded or settled later is still what was charged
        "globex": 0,  # shadow mode charges nothing
        "hooli": 0,
        "initech": 0,
        "pool": 4,
        "umbrella": 2,
    }


def test_a_store_created_with_the_totals_counts_from_its_first_day(admin: Admin, store: RedisStore) -> None:
    admin.apply_plan(PRO)  # the operator's first write marks the store
    assert meta(store) == {"from": "0"}


def test_a_store_that_held_data_before_the_totals_counts_from_the_next_day(
    settings: RedisSettings, store: RedisStore
) -> None:
    store.client.set(store.keys.store, "1")  # marked by the version before the totals
    before = int(time.time())
    admin = Admin(RedisStore.from_settings(settings), clock=Clock())
    try:
        admin.apply_plan(PRO)
    finally:
        admin.close()
    after = int(time.time())
    assert int(meta(store)["from"]) in {t - t % D + D for t in (before, after)}


# 2. The most charged accounts.


def test_top_accounts_are_a_plain_ranking_over_several_days(
    admin: Admin, store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin.apply_plan(PRO)
    names = [f"a{i:02}" for i in range(12)]
    for name in names:
        admin.subscribe(name, "pro", starts_at=T0 - D)
        admin.grant(name, 1_000)
    admin.grant("nothing-charged", 1)  # counted (refused), charged nothing
    # Credits that tie within a day and across days, so that the threshold has to read past a page.
    plan = {0: [9, 9, 8, 1, 0, 0, 3, 3, 3, 0, 2, 0], 1: [0, 5, 5, 5, 9, 1, 0, 0, 7, 0, 0, 4], 2: [1] * 12}
    for offset, costs in plan.items():
        for name, cost in zip(names, costs, strict=True):
            if cost or name in ("a09", "a11"):
                assert store.charge(ChargeRequest(name, cost, now=T0 + offset * D + 1)).allowed
        assert not store.charge(ChargeRequest("nothing-charged", 5, now=T0 + offset * D + 2)).allowed
    store.charge(ChargeRequest("a10", 500, now=T0 + 3))  # refused: counted, nothing more charged
    starts = [T0, T0 + D, T0 + 2 * D]
    credits = Counter[str]()
    for start in starts:
        credits.update(credits_by_account(store, [*names, "nothing-charged"], start))
    for page in (1, 2, 5, 100):
        monkeypatch.setattr(totals_module, "PAGE", page)
        totals = Totals(store)
        days = totals.days(starts, T0 + 10 * D)
        for count in (1, 3, 4, 10, 13, 20):
            best = totals.top(days, count)
            assert best.exact
            assert_ranked_as(best.accounts, dict(credits), count)
    assert Totals(store).top(Totals(store).days(starts, T0 + 10 * D), 20).accounts[-1] == (
        "nothing-charged",
        0,
    )


def test_top_accounts_agree_with_a_plain_ranking_of_random_charges(settings: RedisSettings) -> None:
    store = RedisStore.from_settings(settings)
    names = [f"c{i}" for i in range(7)]

    @given(
        charges=st.lists(
            st.tuples(st.sampled_from([*names, "idle"]), st.integers(0, 4), st.integers(0, 6)), max_size=30
        ),
        counted_from=st.sampled_from([0, T0 + D, T0 + 3 * D, T0 + 5 * D]),
        now=st.sampled_from([T0 + 4 * D + 60, T0 + 4 * D + OVER]),
        page=st.sampled_from([1, 2, 100]),
        count=st.integers(1, 10),
    )
    @hypothesis_settings(max_examples=30, deadline=None)
    def check(
        charges: list[tuple[str, int, int]], counted_from: int, now: int, page: int, count: int
    ) -> None:
        store.client.flushall()
        admin = Admin(store, clock=Clock())
        admin.apply_plan(PRO)
        for name in names:
            admin.subscribe(name, "pro", starts_at=T0 - D)
            admin.grant(name, 1_000)
        store.add_account("idle")  # no subscription: its requests are refused, counted, charged nothing
        # Days before `from` are read from the accounts (as after an upgrade), the others from the totals.
        store.client.hset(totals_meta(store.keys.prefix), "from", counted_from)
        for name, day, cost in charges:
            store.charge(ChargeRequest(name, cost, now=T0 + day * D + 5))
        starts = [T0 + day * D for day in range(5)]
        credits = Counter[str]()
        for start in starts:
            credits.update(credits_by_account(store, [*names, "idle"], start))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(totals_module, "PAGE", page)
            for _ in range(2):  # the first read may write the days over; the second reads them
                totals = Totals(store)
                best = totals.top(totals.days(starts, now), count)
                assert best.exact
                assert_ranked_as(best.accounts, dict(credits), count)

    try:
        check()
    finally:
        store.close()


# 3. How many accounts were counted.


def count_accounts(store: RedisStore, starts: Sequence[int], now: int) -> int:
    totals = Totals(store)
    return totals.accounts_counted(totals.days(starts, now))


def test_accounts_counted_is_exact_for_a_day_and_close_for_several(admin: Admin, store: RedisStore) -> None:
    admin.apply_plan(PRO)  # marks the store: refusals of accounts without a subscription are counted
    groups = {T0: range(0, 1500), T0 + D: range(1000, 2200), T0 + 2 * D: range(2100, 2600)}
    for name in sorted({f"n{i:05}" for r in groups.values() for i in r}):
        store.add_account(name)
    for start, numbers in groups.items():
        for i in numbers:
            assert store.charge(ChargeRequest(f"n{i:05}", 1, now=start + 1)).reason is Reason.NO_SUBSCRIPTION
    union = len({i for r in groups.values() for i in r})
    starts = list(groups)
    for start, numbers in groups.items():
        assert count_accounts(store, [start], T0 + 10 * D) == len(numbers)
    assert abs(count_accounts(store, starts, T0 + 10 * D) - union) <= 0.02 * union
    assert abs(count_accounts(store, starts[:2], T0 + 10 * D) - 2200) <= 0.02 * 2200
    # The first day read from the accounts (counted before the totals), still counting; the others kept.
    store.client.hset(totals_meta(store.keys.prefix), "from", T0 + D)
    assert count_accounts(store, [T0], T0 + 60) == 1500
    assert abs(count_accounts(store, starts, T0 + 60) - union) <= 0.02 * union
    assert store.client.keys("*scratch*") == []  # what the estimate merged into is gone


# 4. Garbage in the totals.


@pytest.fixture
def acme(admin: Admin) -> Admin:
    admin.apply_plan(PRO)
    admin.subscribe("acme", "pro", starts_at=T0 - D)
    admin.grant("acme", 100)
    return admin


def test_a_totals_key_of_another_type_is_bad_data_and_nothing_is_written(
    acme: Admin, store: RedisStore
) -> None:
    charged = store.charge(ChargeRequest("acme", 4, now=T0 - 10, settle_window=D))  # the day before
    key = global_key(store, T0)
    store.client.set(key, "not a hash")
    keys = store.keys.account("acme")

    def written() -> tuple[Any, ...]:
        return store.account_state("acme"), list(store.ledger("acme")), store.client.exists(keys.usage(T0))

    before = written()
    with pytest.raises(StoreDataError, match="totals"):
        store.charge(ChargeRequest("acme", 3, now=T0 + 1, route="route:search"))
    with pytest.raises(StoreDataError, match="totals"):
        store.charge(ChargeRequest("acme", 500, now=T0 + 2))  # a refusal writes nothing either
    with pytest.raises(StoreDataError, match="totals"):
        store.settle("acme", charged.charge_id, 0, now=T0 + 3, refund=True, window_seconds=D)
    assert written() == before and store.account_state("acme").balance == 96
    assert store.client.get(key) == b"not a hash"


def test_a_totals_field_that_is_not_a_counter_is_left_and_the_charge_goes_through(
    acme: Admin, store: RedisStore
) -> None:
    key = global_key(store, T0)
    store.client.hset(key, "route:search|requests", "abc")
    result = store.charge(ChargeRequest("acme", 3, now=T0 + 1, route="route:search"))
    assert result.allowed and store.account_state("acme").balance == 97
    assert store.client.hget(key, "route:search|requests") == b"abc"
    (counters,) = read(store, [T0], T0 + 60)[1]
    assert counters == {"route:search|credits": 3}  # the field that is not a counter is left out


def test_an_accounts_set_of_another_type_does_not_fail_the_charge(acme: Admin, store: RedisStore) -> None:
    key = global_key(store, T0)
    store.client.set(key + ":accounts", "not a sorted set")
    store.client.set(key + ":active", "not a HyperLogLog")
    result = store.charge(ChargeRequest("acme", 3, now=T0 + 1, route="route:search"))
    assert result.allowed and store.account_state("acme").balance == 97
    assert store.client.hgetall(key) == {b"route:search|requests": b"1", b"route:search|credits": b"3"}
    assert store.client.get(key + ":accounts") == b"not a sorted set"


# 5. Days counted before the totals existed.


def test_days_before_the_totals_are_read_from_the_accounts_then_made_whole_once_over(
    admin: Admin, store: RedisStore
) -> None:
    admin.apply_plan(PRO)
    accounts = ("acme", "globex", "initech")
    for account in accounts:
        admin.subscribe(account, "pro", starts_at=T0 - D)
    # Counted by the version before the totals: in the accounts' usage hashes only.
    before = {
        ("acme", T0 - D): {"route:search|requests": 4, "route:search|credits": 9, "route:search|refused": 1},
        ("acme", T0): {"route:search|requests": 2, "route:search|credits": 5},
        ("globex", T0): {"global|requests": 1, "global|credits": 12, "global|member:bob|credits": 12},
        ("initech", T0): {"global|refused": 3},
    }
    for (account, day), kept in before.items():
        for name, value in kept.items():
            store.client.hset(store.keys.account(account).usage(day), name, value)
    # The upgrade: the scripts count whole from T0 + D on.
    store.client.hset(totals_meta(store.keys.prefix), "from", T0 + D)
    admin.grant("acme", 50)
    assert store.charge(ChargeRequest("acme", 3, now=T0 + D + 1, route="route:search")).allowed
    starts = [T0 - D, T0, T0 + D]

    def expected() -> list[dict[str, int]]:
        return [summed(store, accounts, start) for start in starts]

    # During T0: the day before is not over yet for the totals either; both read from the accounts.
    days, counters = read(store, starts, T0 + 60)
    want = expected()
    assert counters == want and want[1] == {
        "route:search|requests": 2,
        "route:search|credits": 5,
        "global|requests": 1,
        "global|credits": 12,
        "global|refused": 3,
    }
    assert [bool(d.key) for d in days] == [False, False, True]
    assert not any(name.startswith("built:") for name in meta(store))
    # Once T0 is over: both written to the totals and marked built, read from them from then on.
    days, counters = read(store, starts, T0 + OVER)
    assert counters == want and all(d.key for d in days)
    assert meta(store) == {
        "from": str(T0 + D),
        f"built:{day_name(T0 - D)}": "1",
        f"built:{day_name(T0)}": "1",
    }
    assert sorted_set(store.client, global_key(store, T0) + ":accounts") == {
        "acme": 5,
        "globex": 12,
        "initech": 0,
    }
    assert store.client.ttl(global_key(store, T0)) > 0
    assert Totals(store).top(days, 10).accounts == [("acme", 9 + 5 + 3), ("globex", 12), ("initech", 0)]
    # The accounts' hashes are no longer read for those days: the second read gives the same figures.
    store.client.delete(*(store.keys.account(a).usage(d) for a, d in before))
    assert read(store, starts, T0 + OVER + 60)[1] == want


def test_the_builder_makes_every_day_over_whole_once_ahead_of_the_reads(
    admin: Admin, store: RedisStore
) -> None:
    """What ``credit-gate serve`` runs in the background (service/totals.py's TotalsBuilder): the days
    before the totals that are over are rebuilt from the accounts once, newest first; the next pass has
    nothing to do, and a read finds them built."""
    admin.apply_plan(PRO)
    admin.subscribe("acme", "pro", starts_at=T0 - 3 * D)
    for day in (T0 - 2 * D, T0 - D, T0):
        store.client.hset(store.keys.account("acme").usage(day), "global|credits", 2)
    store.client.hset(totals_meta(store.keys.prefix), "from", T0 + D)
    totals = Totals(store)
    now = T0 + OVER + 60
    kept_days = 400
    assert totals.build_closed(now) == kept_days - 1  # every day kept but today, which is not over
    assert totals.build_closed(now) == 0
    days, counters = read(store, [T0 - 2 * D, T0 - D, T0], now)
    assert all(d.key for d in days) and counters == [{"global|credits": 2}] * 3


# 6. A Redis Cluster: each slot counts its own, folded once the day is over.


def test_on_a_cluster_the_slots_totals_add_up_and_are_folded_once_the_day_is_over(
    cluster: RedisClusterServers,
    cluster_admin: Admin,  # noqa: F811  (the fixture imported above)
) -> None:
    admin, store = cluster_admin, cluster_admin.store
    admin.clock = Clock()
    accounts = ("acme", "globex", "initech", "umbrella", "pool")
    owners = slot_owners(cluster)
    with cluster.client() as client:
        slots = {a: client.keyslot(store.keys.account(a).state) for a in accounts}
    assert len(set(slots.values())) == len(accounts) and len({owners[s] for s in slots.values()}) > 1
    assert len({slot_totals_prefix(store.keys.prefix, a) for a in accounts}) == len(accounts)
    admin.apply_plan(PRO)
    assert meta(store) == {"from": "0"}
    for i, account in enumerate(accounts):
        admin.subscribe(account, "pro", starts_at=T0 - D)
        admin.grant(account, 10 + i)
    for i, account in enumerate(accounts):
        for day in (0, 1):
            assert store.charge(
                ChargeRequest(account, i + 1, now=T0 + day * D + i, route="route:search")
            ).allowed
        store.charge(ChargeRequest(account, 1_000, now=T0 + i, route="route:search"))  # refused
    assert store.charge(ChargeRequest("pool", 2, now=T0 + 40, member="alice")).allowed
    starts = [T0, T0 + D]
    want = [summed(store, accounts, start) for start in starts]
    credits = Counter[str]()
    for start in starts:
        credits.update(credits_by_account(store, accounts, start))
    assert want[0]["route:search|refused:insufficient_credit"] == len(accounts)

    days, counters = read(store, starts, T0 + D + 60)  # both still counting on the slots
    assert counters == want and [d.key for d in days] == ["", ""]
    assert meta(store) == {"from": "0"}
    totals = Totals(store)
    assert totals.top(days, 10).accounts == ranking(dict(credits), 10)

    days, counters = read(store, starts, T0 + OVER + 60)  # T0 over: folded into the global keys
    assert counters == want
    assert [bool(d.key) for d in days] == [True, False]
    assert meta(store) == {"from": "0", f"built:{day_name(T0)}": "1"}
    with cluster.client() as client:
        assert sorted_set(client, global_key(store, T0) + ":accounts") == credits_by_account(
            store, accounts, T0
        )
        held = {k.decode(): int(v) for k, v in client.hgetall(global_key(store, T0)).items()}
        assert held == want[0]
    totals = Totals(store)
    assert_ranked_as(totals.top(days, 3).accounts, dict(credits), 3)
    assert totals.top(days, 10).accounts == ranking(dict(credits), 10)
    assert totals.accounts_counted(days[:1]) == totals.accounts_counted(days[1:]) == len(accounts)
    assert totals.accounts_counted(days) == len(accounts)  # one day folded, one held

    days, counters = read(store, starts, T0 + D + OVER)  # both over: the second day folded too
    assert counters == want and all(d.key for d in days)
    assert totals.top(days, 10).accounts == ranking(dict(credits), 10)
    assert totals.accounts_counted(days) == len(accounts)
    with cluster.client() as client:  # the slots' own are left to expire; read no more
        client.delete(*{slot_totals_prefix(store.keys.prefix, a) + day_name(T0 + D) for a in accounts})
    assert read(store, starts, T0 + D + OVER + 60)[1] == want


# 7. The service's GET /v1/usage/totals.

FIGURES = ("requests", "credits", "refunded", "refused", "replayed", "shadow_allowed", "shadow_refused")


def totals_as_before(admin: Admin, since: int, until: int, top: int) -> dict[str, Any]:
    """What /v1/usage/totals answered when it added every account's rows up (the version before the
    totals): the reference the answer from the totals must equal."""

    def zero() -> dict[str, Any]:
        return {**dict.fromkeys(FIGURES, 0), "refused_by_reason": {}}

    def add(into: dict[str, Any], row: Any) -> None:
        for name in FIGURES:
            into[name] += getattr(row, name)
        for reason, count in row.refused_by_reason:
            into["refused_by_reason"][reason] = into["refused_by_reason"].get(reason, 0) + count

    rows = [r for r in admin.usage(since=since, until=until) if not r.member]
    first = since - since % D
    days = {(format_instant(d) or "")[:10]: zero() for d in range(first, until, D)}
    routes: dict[str, dict[str, Any]] = {}
    accounts: dict[str, dict[str, Any]] = {}
    total = zero()
    for row in rows:
        for into in (days.setdefault(row.day, zero()), routes.setdefault(row.route, zero()), total):
            add(into, row)
        add(accounts.setdefault(row.account, zero()), row)
    ranked = sorted(accounts.items(), key=lambda item: (-item[1]["credits"], item[0]))

    def tidy(figures: dict[str, Any]) -> dict[str, Any]:
        return {**figures, "refused_by_reason": dict(sorted(figures["refused_by_reason"].items()))}

    by_reason = total["refused_by_reason"]
    return {
        "since": format_instant(first),
        "until": format_instant(until),
        "total": tidy(total),
        "reasons": sorted(by_reason, key=lambda reason: (-by_reason[reason], reason)),
        "days": [{"day": day, **tidy(f)} for day, f in sorted(days.items())],
        "routes": [{"route": route, **tidy(f)} for route, f in sorted(routes.items())],
        "top_accounts": [{"account": name, **tidy(f)} for name, f in ranked[:top]],
        "accounts_with_usage": len(accounts),
    }


@pytest.fixture
def recent(admin: Admin, store: RedisStore) -> Iterator[int]:
    """A store with usage on a few days of the last 400, as they are now (the service reads the wall
    clock); yields today's start."""
    now = int(time.time())
    today = now - now % D
    admin.clock = Clock(now)
    admin.apply_plan(PRO)
    for account in ("acme", "globex", "initech", "pool"):
        admin.subscribe(account, "pro", starts_at=today - 500 * D)
        admin.grant(account, 1_000)
    admin.set_status("initech", Status.SUSPENDED)
    for back, account, cost, route in [
        (390, "acme", 4, "route:search"),
        (200, "globex", 9, "route:export"),
        (200, "acme", 9, "route:search"),
        (3, "pool", 5, "route:export"),
        (3, "initech", 1, "route:search"),
        (1, "acme", 2000, "route:search"),
        (1, "globex", 1, "route:search"),
    ]:
        store.charge(ChargeRequest(account, cost, now=today - back * D + 7, route=route))
    charge = store.charge(
        ChargeRequest("acme", 6, now=today - 1 * D + 8, route="route:search", settle_window=D)
    )
    store.settle("acme", charge.charge_id, 0, now=today - D + 9, refund=True, window_seconds=D)
    store.charge(ChargeRequest("pool", 3, now=today - 3 * D + 9, member="alice", route="route:export"))
    yield today


def test_the_service_answers_400_days_as_it_did_from_every_accounts_rows(
    settings: RedisSettings, admin: Admin, store: RedisStore, recent: int
) -> None:
    since = recent - 399 * D
    until = recent + D  # the end of today: 400 days, also should the clock pass midnight meanwhile
    params = {"since": format_instant(since), "until": format_instant(until), "top": 3}
    with running_service(settings) as api:
        answer = api.call("GET", "/v1/usage/totals", token=READ_TOKEN, params=params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body.pop("top_accounts_exact") is True
        expected = totals_as_before(admin, since, until, 3)
        assert len(body["days"]) == 400
        assert body == expected
        assert body["total"]["credits"] > 0 and body["accounts_with_usage"] == 4
        # The same store as one upgraded today: every day before today read from the accounts, and
        # written to the totals (a day over); then read from those.
        store.client.hset(totals_meta(store.keys.prefix), "from", recent + D)
        read_at = int(time.time())
        for _ in range(2):
            again = api.call("GET", "/v1/usage/totals", token=READ_TOKEN, params=params).json()
            again.pop("top_accounts_exact")
            assert again == expected
        over = {sum(day + OVER <= t for day in range(since, until, D)) for t in (read_at, int(time.time()))}
        assert sum(name.startswith("built:") for name in meta(store)) in over  # 399: all but today


def test_the_service_refuses_more_than_100_accounts(settings: RedisSettings) -> None:
    with running_service(settings) as api:
        names = [f"a{i:03}" for i in range(101)]
        refused = api.call("GET", "/v1/usage/totals", token=READ_TOKEN, params={"account": names})
        assert refused.status_code in (400, 422)
        problem = refused.json()
        assert (problem["code"], problem["field"]) == ("invalid_input", "account")
        assert refused.headers["content-type"].startswith("application/problem+json")
