"""The balance read: balance.lua against a real Redis, and the body it becomes, checked by its schema.

The script must show what the next charge would start from, never a figure the charge would refuse:
every field it reads is held against charge.lua's own checks, and it writes nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
from redis.cluster import RedisCluster

from creditgate.core.balance import BalanceView, balance_answer, balance_body
from creditgate.core.decision import Warnings
from creditgate.core.model import Plan
from creditgate.core.periods import Period, window_at
from creditgate.core.policy import ChargeRequest
from creditgate.core.redis_settings import parse_redis
from creditgate.errors import StoreDataError, StoreEmpty
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.money.test_data_errors import NOT_INTEGERS, snapshot
from tests.redis_servers import RedisClusterServers

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "balance.schema.json").read_text())
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
INTEGER_FIELDS = [
    "balance",
    "used",
    "allowance",
    "starts_at",
    "anchor",
    "expires_at",
    "period_start",
    "period_requests",
    "period_from_balance",
    "period_restarts",
    "debt",
    "frozen",
    "grace_until",
]


def validate_balance(body: dict[str, Any]) -> None:
    jsonschema.validate(body, SCHEMA, format_checker=jsonschema.FormatChecker())


def view(**changes: Any) -> BalanceView:
    values: dict[str, Any] = dict(
        plan="pro",
        status="active",
        balance=40,
        allowance=100,
        allowance_used=30,
        period="month",
        period_start=NOW - 86_400,
        period_end=NOW + 86_400 * 29,
        starts_at=NOW - 86_400 * 40,
        expires_at=0,
        prepaid=True,
        now=NOW,
        period_requests=9,
        period_from_balance=6,
    )
    values.update(changes)
    return BalanceView(**values)


# The body, with plain values


def test_the_body_tells_the_plan_the_balance_and_the_allowance_left_in_the_period() -> None:
    body = balance_body(view(), "acme", "", Warnings())
    validate_balance(body)
    assert body == {
        "account": "acme",
        "plan": "pro",
        "status": "active",
        "balance": 40,
        "debt": 0,
        "frozen": 0,
        "prepaid": True,
        "allowance": 100,
        "allowance_used": 30,
        "allowance_remaining": 70,
        "period": "month",
        "period_start": "2025-12-31T00:00:00Z",
        "period_end": "2026-01-30T00:00:00Z",
        "starts_at": "2025-11-22T00:00:00Z",
        "expires_at": None,
        "grace_until": None,
        "usage": {"requests": 9, "credits": 36, "from_allowance": 30, "from_balance": 6},
        "warnings": [],
        "member": None,
        "as_of": "2026-01-01T00:00:00Z",
    }


def test_the_answer_is_a_200_in_json_that_no_shared_cache_may_keep() -> None:
    answer = balance_answer(view(), "acme", "", Warnings())
    assert answer.status == 200
    assert answer.headers == {"Content-Type": "application/json", "Cache-Control": "no-store"}
    assert json.loads(answer.encoded()) == answer.body


def test_an_account_without_a_subscription_shows_its_balance_and_nulls_for_the_rest() -> None:
    empty = view(
        plan="", status="", allowance=0, allowance_used=0, period="none", period_start=0, period_end=0
    )
    body = balance_body(empty, "acme", "", Warnings(balance_below=100))
    validate_balance(body)
    assert body["balance"] == 40 and body["plan"] is None and body["status"] is None
    assert body["allowance_remaining"] is None and body["period_end"] is None
    assert body["usage"] is None
    assert body["warnings"] == []  # no plan, no request would be allowed to carry one


def test_the_warnings_are_the_ones_an_allowed_request_would_carry() -> None:
    warnings = Warnings(balance_below=50, allowance_below=80, expiry_days=3)
    body = balance_body(view(expires_at=NOW + 86_400), "acme", "", warnings)
    validate_balance(body)
    assert body["warnings"] == ["low_balance", "low_allowance", "subscription_expiring"]
    assert balance_body(view(), "acme", "", Warnings(balance_below=40))["warnings"] == []


def test_a_pool_member_sees_its_own_cap_and_use_beside_the_pools_balance() -> None:
    capped = balance_body(view(member_used=12, member_cap=20, member_requests=3), "team-a", "ann", Warnings())
    validate_balance(capped)
    assert (capped["account"], capped["balance"]) == ("team-a", 40)
    assert capped["member"] == {"name": "ann", "used": 12, "requests": 3, "cap": 20, "remaining": 8}
    uncapped = balance_body(view(member_used=12), "team-a", "ann", Warnings())
    validate_balance(uncapped)
    assert uncapped["member"] == {"name": "ann", "used": 12, "requests": 0, "cap": None, "remaining": None}


def test_a_debt_and_the_credits_disputes_hold_are_told_beside_the_balance() -> None:
    body = balance_body(view(balance=0, debt=7, frozen=3), "acme", "", Warnings())
    validate_balance(body)
    assert (body["balance"], body["debt"], body["frozen"]) == (0, 7, 3)


def test_a_past_due_subscription_tells_until_when_it_is_still_charged() -> None:
    grace = NOW + 3 * 86_400
    past_due = balance_body(view(status="past_due", grace_until=grace), "acme", "", Warnings())
    validate_balance(past_due)
    assert past_due["grace_until"] == "2026-01-04T00:00:00Z"
    # Any other status has no grace to tell, whatever the field still holds; nor has a past_due without one.
    assert balance_body(view(grace_until=grace), "acme", "", Warnings())["grace_until"] is None
    assert balance_body(view(status="past_due"), "acme", "", Warnings())["grace_until"] is None


def test_the_schema_refuses_a_made_up_figure() -> None:
    body = balance_body(view(), "acme", "", Warnings())
    for bad in ({"balance": -1}, {"balance": 1.5}, {"allowance_remaining": "70"}, {"extra": 1}, {"debt": -1}):
        with pytest.raises(jsonschema.ValidationError):
            validate_balance({**body, **bad})


# The script, against a real Redis


@pytest.fixture
def live(store: RedisStore) -> Admin:
    """The account "acme" on a monthly plan of 10 credits and prepaid use, with 50 credits, subscribed
    a day ago by the real clock (the script reads Redis's)."""
    admin = Admin(store)
    admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=10, prepaid=True))
    admin.subscribe("acme", "pro", starts_at=int(time.time()) - 86_400)
    admin.grant("acme", 50)
    return admin


def test_the_figures_are_the_ones_the_charges_left(
    live: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    before = redis_client.time()[0]
    for _ in range(3):
        charged = store.charge(ChargeRequest("acme", 4))
    seen = store.balance("acme")
    assert (seen.plan, seen.status, seen.prepaid) == ("pro", "active", True)
    assert (seen.balance, seen.allowance_used, seen.allowance_remaining) == (48, 10, 0)
    assert (seen.balance, seen.allowance_remaining) == (charged.balance, charged.allowance_remaining)
    assert (seen.period_start, seen.period_end) == (charged.period_start, charged.period_end)
    assert (seen.period_requests, seen.period_from_balance) == (3, 2)
    assert before <= seen.now <= redis_client.time()[0]  # Redis's clock


def test_the_payments_fields_are_read_as_stored(
    live: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    state = store.keys.account("acme").state
    assert (store.balance("acme").debt, store.balance("acme").frozen) == (0, 0)  # absent: 0
    grace = int(time.time()) + 3600
    redis_client.hset(state, mapping={"status": "past_due", "debt": 12, "frozen": 5, "grace_until": grace})
    seen = store.balance("acme")
    assert (seen.status, seen.debt, seen.frozen, seen.grace_until) == ("past_due", 12, 5, grace)


def test_reading_writes_nothing(live: Admin, store: RedisStore, redis_client: redis.Redis) -> None:
    store.charge(ChargeRequest("acme", 4))
    before = snapshot(redis_client)
    store.balance("acme")
    store.balance("acme", "ann")
    assert snapshot(redis_client) == before


def test_an_ended_period_reads_as_the_next_one_with_nothing_used_and_stays_unwritten(
    live: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    store.charge(ChargeRequest("acme", 4))
    state = store.keys.account("acme").state
    anchor = int(time.time()) - 86_400 * 70  # two months and more ago: the stored period has ended
    redis_client.hset(
        state, mapping={"anchor": anchor, "period_start": anchor, "period_end": anchor + 86_400}
    )
    before = snapshot(redis_client)
    seen = store.balance("acme")
    window = window_at(Period.MONTH, anchor, seen.now)
    assert (seen.period_start, seen.period_end, seen.allowance_used) == (window.start, window.end, 0)
    assert snapshot(redis_client) == before
    assert store.charge(ChargeRequest("acme", 1)).period_end == seen.period_end  # the charge agrees


def test_an_account_never_subscribed_shows_its_balance_and_no_plan(live: Admin, store: RedisStore) -> None:
    live.grant("newcomer", 7)
    seen = store.balance("newcomer")
    assert (seen.plan, seen.balance, seen.allowance) == ("", 7, 0)
    assert store.balance("stranger").plan == ""


def test_a_redis_emptied_under_the_gate_is_an_outage_not_an_empty_account(
    live: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    redis_client.flushall()
    with pytest.raises(StoreEmpty):
        store.balance("acme")


def test_a_pool_member_reads_its_own_use_of_the_current_period_only(live: Admin, store: RedisStore) -> None:
    live.set_member_cap("acme", "ann", 9)
    store.charge(ChargeRequest("acme", 3, member="ann"))
    store.charge(ChargeRequest("acme", 2, member="bob"))
    ann, bob, cid = store.balance("acme", "ann"), store.balance("acme", "bob"), store.balance("acme", "cid")
    assert (ann.member_used, ann.member_cap) == (3, 9)
    assert (bob.member_used, bob.member_cap) == (2, -1)
    assert (cid.member_used, cid.member_cap) == (0, -1)


def test_a_script_flush_between_reads_is_survived(
    live: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    store.balance("acme")
    redis_client.script_flush()
    assert store.balance("acme").balance == 50


# Bad data: whatever the charge refuses, the read refuses too, naming the same key


def charge_and_read_refuse(store: RedisStore, member: str = "") -> tuple[str, str]:
    with pytest.raises(StoreDataError) as charged:
        store.charge(ChargeRequest("acme", 1, member=member))
    with pytest.raises(StoreDataError) as read:
        store.balance("acme", member)
    return charged.value.key, read.value.key


@pytest.mark.parametrize("field", INTEGER_FIELDS)
@pytest.mark.parametrize("value", NOT_INTEGERS[:8])
def test_a_field_the_charge_refuses_is_never_shown(
    live: Admin, store: RedisStore, redis_client: redis.Redis, field: str, value: str
) -> None:
    state = store.keys.account("acme").state
    redis_client.hset(state, field, value)
    assert charge_and_read_refuse(store) == (state, state)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "ACTIVE"),
        ("period", "year"),
        ("prepaid", "yes"),
        ("balance", "-1"),
        ("used", str(10**16)),
        ("debt", "-1"),
        ("frozen", str(10**15 + 1)),
        ("grace_until", "32503680001"),  # past the year 3000
    ],
)
def test_a_word_or_bound_the_charge_refuses_is_never_shown(
    live: Admin, store: RedisStore, redis_client: redis.Redis, field: str, value: str
) -> None:
    state = store.keys.account("acme").state
    redis_client.hset(state, field, value)
    assert charge_and_read_refuse(store) == (state, state)


def test_a_period_that_ends_before_it_starts_is_never_shown(
    live: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    state = store.keys.account("acme").state
    redis_client.hset(state, mapping={"period_start": 2000, "period_end": 1000})
    assert charge_and_read_refuse(store) == (state, state)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cap:ann", "1e3"),
        ("used:ann", "12"),
        ("used:ann", "x:3"),
        ("requests:ann", "12"),
        ("requests:ann", "1:1e3"),
    ],
)
def test_a_members_field_the_charge_refuses_is_never_shown(
    live: Admin, store: RedisStore, redis_client: redis.Redis, field: str, value: str
) -> None:
    members = store.keys.account("acme").members
    redis_client.hset(members, field, value)
    assert charge_and_read_refuse(store, "ann") == (members, members)


@pytest.mark.parametrize("which", ["state", "members"])
def test_a_key_of_the_wrong_type_is_never_shown(
    live: Admin, store: RedisStore, redis_client: redis.Redis, which: str
) -> None:
    keys = store.keys.account("acme")
    key = keys.state if which == "state" else keys.members
    redis_client.delete(key)
    redis_client.rpush(key, "x")
    assert charge_and_read_refuse(store, "ann") == (key, key)


# Redis Cluster: each account is read on its own slot, in one script


@pytest.mark.server
def test_a_cluster_answers_every_account_from_its_own_slot(cluster: RedisClusterServers) -> None:
    nodes = [{"ip": host, "port": port} for host, port in cluster.nodes]
    store = RedisStore.from_settings(parse_redis({"cluster_nodes": nodes, "read_timeout": 1000}))
    try:
        admin = Admin(store)
        admin.apply_plan(Plan("pro", period=Period.DAY, allowance=3, prepaid=True))
        accounts = [f"acct-{i}" for i in range(12)]  # spread over the three masters
        for i, account in enumerate(accounts):
            admin.subscribe(account, "pro", starts_at=int(time.time()) - 60)
            admin.grant(account, 10 + i)
            store.charge(ChargeRequest(account, 4))
        seen = [store.balance(account) for account in accounts]
        assert [(v.balance, v.allowance_remaining) for v in seen] == [(9 + i, 0) for i in range(12)]
        with cluster.client() as client:
            client.flushall(target_nodes=RedisCluster.PRIMARIES)
        with pytest.raises(StoreEmpty):
            store.balance(accounts[0])
    finally:
        store.close()
