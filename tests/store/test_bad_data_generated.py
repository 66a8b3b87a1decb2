"""Bad data, generated: any field of any key a script reads, and any key of the wrong type.

An account that would be charged is seeded, then one value or one key's type is broken. A charge, a
settlement and a grant on it must each be refused cleanly (a refusal with a reason, or a typed
``CreditGateError``) and write nothing: a full dump of the account's keys is the same before and after.
The per-day usage counters may count a refusal, unless the broken key is the usage hash itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import cast

import pytest
import redis
from hypothesis import assume, given
from hypothesis import strategies as st
from redis.typing import EncodableT, FieldT

from creditgate.core.decision import ChargeResult
from creditgate.core.model import MAX_CREDITS, Plan
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.errors import CreditGateError
from creditgate.ops.admin import Admin
from creditgate.store.replies import request_key_input
from creditgate.store.store import RedisStore
from tests.conftest import Clock
from tests.money_support import bad_data_settings, dump_keys
from tests.redis_servers import RedisServer

ACCOUNT = "acct"
T0 = 1_767_225_600
RETENTION = 2  # so that the next write folds the oldest ledger entries (and reads their amounts)

# Values no strict reader may take for a number: each parses with Lua's tonumber, or is not a number.
NOT_INTEGERS = ["1e3", "0x10", " 5", "5 ", "+5", "inf", "-inf", "nan", "", "1.5", "5.", "1_0", "٣", "\x00"]
number_text = st.one_of(
    st.sampled_from(NOT_INTEGERS),
    st.integers(MAX_CREDITS + 1, 2**70).map(str),  # past the cap, past 2**53, past 2**63
    st.integers(-(2**70), -1).map(str),  # negative where no field may be
    st.binary(min_size=1, max_size=6).filter(lambda b: not b.strip().isdigit()),
    st.text(min_size=1, max_size=5).filter(lambda t: not t.strip().lstrip("-").isdigit()),
)
_bad_part = number_text.filter(lambda v: isinstance(v, str)).map(str)
_MEMBER_PARTS = ("1", str(T0), "1")  # "<period restarts>:<period start>:<n>", each part valid
# A member's use or requests: a bad whole, or one bad part of either form (with or without restarts).
member_text = st.one_of(
    number_text,
    st.tuples(st.integers(0, 2), _bad_part).map(
        lambda t: ":".join(t[1] if i == t[0] else part for i, part in enumerate(_MEMBER_PARTS))
    ),
    _bad_part.map(lambda b: f"{T0}:{b}"),
    _bad_part.map(lambda b: f"{b}:1"),
)
word_text = st.one_of(
    st.sampled_from(["", "Active", "active ", "2", "monthly", "yes"]), st.binary(max_size=5)
)
NUMBER_FIELDS = [
    "starts_at",
    "anchor",
    "expires_at",
    "allowance",
    "balance",
    "used",
    "period_start",
    "period_end",
    "period_requests",
    "period_from_balance",
    "period_restarts",
    "debt",
    "frozen",
    "grace_until",
]
WORD_FIELDS = ["status", "period", "prepaid"]
TYPES = ["string", "list", "set", "zset", "hash", "stream"]


@pytest.fixture
def client(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[redis.Redis]:
    yield redis_client


def seed(store: RedisStore, client: redis.Redis) -> tuple[Admin, str]:
    """A prepaid daily plan with an allowance, a balance, a pool member with a cap and some use, a
    settleable charge (its ledger id is returned), a request key and a ledger long enough to fold."""
    client.flushall()
    admin = Admin(store, ledger_retention=RETENTION, clock=Clock(T0))
    admin.apply_plan(Plan("daily", period=Period.DAY, allowance=5, prepaid=True))
    admin.subscribe(ACCOUNT, "daily", starts_at=T0 - 60, anchor=T0 - 60)
    admin.grant(ACCOUNT, 100, idempotency_key="seed")
    admin.set_member_cap(ACCOUNT, "m1", 50)
    held = charge(store, key="r1", hold=600)
    assert held.allowed
    return admin, held.charge_id


def charge(store: RedisStore, *, key: str = "r2", hold: int = 0) -> ChargeResult:
    return store.charge(
        ChargeRequest(
            ACCOUNT,
            3,
            now=T0 + 10,
            ledger_retention=RETENTION,
            idempotency_key=key,
            idempotency_window=3600,
            member="m1",
            hold_seconds=hold,
            settle_window=3600,
        )
    )


def every_operation(store: RedisStore, admin: Admin, charge_id: str) -> Iterator[tuple[str, object]]:
    """Each write a request or an operator makes, with what it answered (or the error it raised)."""
    calls: dict[str, Callable[[], object]] = {
        "charge": lambda: charge(store),
        "retried charge": lambda: charge(store, key="r1", hold=600),
        "settle": lambda: store.settle(
            ACCOUNT, charge_id, 1, now=T0 + 20, ledger_retention=RETENTION, window_seconds=3600
        ),
        "refund": lambda: store.settle(
            ACCOUNT, charge_id, 0, now=T0 + 20, refund=True, ledger_retention=RETENTION, window_seconds=3600
        ),
        "grant": lambda: admin.grant(ACCOUNT, 7, idempotency_key="new"),
        "adjust": lambda: admin.adjust_down(ACCOUNT, 1, idempotency_key="down"),
    }
    for name, call in calls.items():
        try:
            yield name, call()
        except CreditGateError as error:
            yield name, error


def broken_keys(store: RedisStore, charge_id: str) -> dict[str, str]:
    keys = store.keys.account(ACCOUNT)
    return {
        "account": keys.state,
        "ledger": keys.ledger,
        "keys": keys.idempotency,
        "members": keys.members,
        "usage": keys.usage(T0 + 10),
        "request": keys.request(request_key_input("global", 3, "r1", "m1")),
        "holds": keys.holds,
        "holds index": keys.holds_index,
        "settled": keys.settled(charge_id),
    }


# The keys each operation reads (and so must check before its first write).
CHARGE_READS = {
    "account",
    "ledger",
    "usage",
    "members",
    "holds",
    "holds index",
    "members:cap",
    "usage:requests",
}
ACCOUNT_FIELDS = {f"account:{name}" for name in [*NUMBER_FIELDS, *WORD_FIELDS, "ledger_base"]}
SETTLE_FIELDS = {
    f"account:{name}"
    for name in [
        "balance",
        "used",
        "period_start",
        "period_end",
        "ledger_base",
        "period_requests",
        "period_from_balance",
        "period_restarts",
    ]
}
CREDIT_FIELDS = {"account:balance", "account:debt", "account:ledger_base"}
READS = {
    "charge": CHARGE_READS | ACCOUNT_FIELDS,
    "retried charge": CHARGE_READS | ACCOUNT_FIELDS | {"request"},
    "settle": CHARGE_READS - {"members:cap", "usage:requests"} | SETTLE_FIELDS | {"settled", "holds:value"},
    "refund": CHARGE_READS - {"members:cap", "usage:requests"} | SETTLE_FIELDS | {"settled", "holds:value"},
    "grant": {"account", "keys", "ledger"} | CREDIT_FIELDS,
    "adjust": {"account", "keys", "ledger"} | CREDIT_FIELDS,
}


def assert_clean(store: RedisStore, client: redis.Redis, admin: Admin, charge_id: str, broken: str) -> None:
    """Every operation that reads the broken key refuses (a reason or a typed error) and writes
    nothing at all; one that does not read it may go on."""
    pattern = f"credit-gate:{{{ACCOUNT}}}:*"
    usage_prefix = store.keys.account(ACCOUNT).usage_prefix.encode()

    def snapshot() -> dict[bytes, object]:
        dump = dump_keys(client, pattern)
        return {k: v for k, v in dump.items() if broken.startswith("usage") or not k.startswith(usage_prefix)}

    before = snapshot()
    for name, outcome in every_operation(store, admin, charge_id):
        after = snapshot()
        if broken in READS[name]:
            moved = getattr(outcome, "allowed", False) and not getattr(outcome, "replayed", False)
            moved = moved or getattr(outcome, "outcome", "") == "applied"
            moved = moved or getattr(outcome, "applied", False)
            assert not moved, f"{name} went through on a broken {broken}: {outcome!r}"
            assert after == before, f"{name} wrote on a broken {broken}: {outcome!r}"
        before = after


@pytest.fixture
def broken_store(settings: object, client: redis.Redis) -> Iterator[RedisStore]:
    store = RedisStore.from_settings(settings)  # type: ignore[arg-type]
    yield store
    store.close()


def test_a_bad_number_in_any_account_field_is_refused_with_nothing_written(
    broken_store: RedisStore, client: redis.Redis
) -> None:
    @given(name=st.sampled_from([*NUMBER_FIELDS, "ledger_base"]), value=number_text)
    @bad_data_settings(60)
    def check(name: str, value: str | bytes) -> None:
        # ledger_base is the sum of what was folded: any integer a double holds exactly may be right.
        integer = isinstance(value, str) and value.lstrip("-").isdigit() and abs(int(value)) < 2**53
        assume(not (name == "ledger_base" and integer))
        admin, charge_id = seed(broken_store, client)
        key = broken_store.keys.account(ACCOUNT).state
        client.hset(key, name, value)
        assert_clean(broken_store, client, admin, charge_id, f"account:{name}")

    check()


def test_a_bad_word_in_the_account_is_refused_with_nothing_written(
    broken_store: RedisStore, client: redis.Redis
) -> None:
    @given(name=st.sampled_from(WORD_FIELDS), value=word_text)
    @bad_data_settings(30)
    def check(name: str, value: str | bytes) -> None:
        admin, charge_id = seed(broken_store, client)
        key = broken_store.keys.account(ACCOUNT).state
        client.hset(key, name, value)
        assert_clean(broken_store, client, admin, charge_id, f"account:{name}")

    check()


def test_bad_member_ledger_hold_and_usage_values_are_refused_with_nothing_written(
    broken_store: RedisStore, client: redis.Redis
) -> None:
    @given(
        where=st.sampled_from(["cap", "member use", "member requests", "ledger amount", "hold", "usage"]),
        value=number_text,
        member_value=member_text,
    )
    @bad_data_settings(60)
    def check(where: str, value: str | bytes, member_value: str | bytes) -> None:
        admin, charge_id = seed(broken_store, client)
        keys = broken_store.keys.account(ACCOUNT)
        broken = {
            "cap": "members:cap",
            "member use": "members",
            "member requests": "members",
            "ledger amount": "ledger",
            "hold": "holds:value",
        }
        negative = isinstance(value, str) and value.startswith("-") and value[1:].isdigit()
        # A ledger amount may be negative (a charge's); a negative usage counter is taken (money
        # finding 4: statistics, no money moves on it).
        assume(
            not (negative and (where == "usage" or (where == "ledger amount" and int(value) >= -MAX_CREDITS)))
        )
        # A usage counter is a count, not credits: HINCRBY keeps it exact up to 2**63.
        assume(not (where == "usage" and isinstance(value, str) and value.isdigit()))
        if where == "cap":
            key = keys.members
            client.hset(key, "cap:m1", value)
        elif where == "member use":
            key = keys.members
            client.hset(key, "used:m1", member_value)
        elif where == "member requests":
            key = keys.members
            client.hset(key, "requests:m1", member_value)
        elif where == "ledger amount":
            key = keys.ledger
            entries = cast(list[tuple[bytes, dict[FieldT, EncodableT]]], client.xrange(key))
            client.delete(key)
            # The same stream, its oldest entry (folded next) broken.
            for i, (entry_id, fields) in enumerate(entries):
                client.xadd(key, {**fields, b"amount": value} if i == 0 else fields, id=entry_id)
        elif where == "hold":
            key = keys.holds
            client.hset(key, charge_id, value)
        else:
            key = keys.usage(T0 + 10)
            client.hset(key, "global|requests", value)
        assert_clean(broken_store, client, admin, charge_id, broken.get(where, "usage:requests"))

    check()


def test_a_key_of_the_wrong_type_is_refused_with_nothing_written(
    broken_store: RedisStore, client: redis.Redis
) -> None:
    @given(
        which=st.sampled_from(
            ["account", "ledger", "keys", "members", "usage", "request", "holds", "holds index", "settled"]
        ),
        kind=st.sampled_from(TYPES),
    )
    @bad_data_settings(40)
    def check(which: str, kind: str) -> None:
        admin, charge_id = seed(broken_store, client)
        key = broken_keys(broken_store, charge_id)[which]
        expected = {
            "account": "hash",
            "ledger": "stream",
            "keys": "hash",
            "members": "hash",
            "usage": "hash",
            "request": "string",
            "holds": "hash",
            "holds index": "zset",
            "settled": "string",
        }[which]
        if kind == expected:
            return
        client.delete(key)
        write_one: dict[str, Callable[[], object]] = {
            "string": lambda: client.set(key, "x"),
            "list": lambda: client.rpush(key, "x"),
            "set": lambda: client.sadd(key, "x"),
            "zset": lambda: client.zadd(key, {"x": 1}),
            "hash": lambda: client.hset(key, "x", "1"),
            "stream": lambda: client.xadd(key, {"x": "1"}),
        }
        write_one[kind]()
        assert_clean(broken_store, client, admin, charge_id, which)

    check()
