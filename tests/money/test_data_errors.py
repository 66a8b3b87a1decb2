"""Bad data in Redis is not an outage: the request is refused with its own reason, nothing is written.

A hash field that does not parse strictly as an integer (Lua's tonumber would take "1e3", "0x10",
" 5", "inf", "nan"), a word that is not one of the known values, or a key of the wrong type: the
script ends before its first write (Redis does not roll back), the store raises StoreDataError naming
the key, and the gate answers 500 account_data_invalid whatever fault_tolerant says, without the
circuit breaker counting it.
"""

from __future__ import annotations

import json

import pytest
import redis

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.errors import StoreDataError
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.conftest import Clock
from tests.core.test_decision import validate_problem
from tests.gate_fixtures import gate_config
from tests.harness import KongRequest, KongSide

NOT_INTEGERS = ["1e3", "0x10", " 5", "5 ", "inf", "-inf", "nan", "0.5", "", "abc", "01", "+5", "1" * 20]
INTEGER_FIELDS = [
    "balance",
    "used",
    "allowance",
    "starts_at",
    "anchor",
    "expires_at",
    "period_start",
    "debt",
    "frozen",
    "grace_until",
]


def snapshot(client: redis.Redis) -> dict[bytes | str, bytes | None]:
    return {key: client.dump(key) for key in sorted(client.keys("*"))}


@pytest.fixture
def seeded(admin: Admin, clock: Clock) -> Admin:
    admin.apply_plan(Plan("pro", period=Period.DAY, allowance=5, prepaid=True))
    admin.subscribe("acme", "pro", starts_at=clock.now - 60)
    admin.grant("acme", 100)
    return admin


def charge_refused_writing_nothing(
    store: RedisStore, client: redis.Redis, now: int, **options: object
) -> str:
    before = snapshot(client)
    with pytest.raises(StoreDataError) as raised:
        store.charge(ChargeRequest("acme", 3, now=now, **options))  # type: ignore[arg-type]
    assert snapshot(client) == before
    return raised.value.key


@pytest.mark.parametrize("field", INTEGER_FIELDS)
@pytest.mark.parametrize("value", NOT_INTEGERS)
def test_a_field_that_is_not_a_strict_integer_is_refused_and_nothing_is_written(
    seeded: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock, field: str, value: str
) -> None:
    state_key = store.keys.account("acme").state
    redis_client.hset(state_key, field, value)
    assert charge_refused_writing_nothing(store, redis_client, clock.now) == state_key


@pytest.mark.parametrize(("field", "value"), [("status", "ACTIVE"), ("period", "year"), ("prepaid", "yes")])
def test_a_word_that_is_not_a_known_value_is_refused(
    seeded: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock, field: str, value: str
) -> None:
    redis_client.hset(store.keys.account("acme").state, field, value)
    charge_refused_writing_nothing(store, redis_client, clock.now)


@pytest.mark.parametrize("which", ["state", "ledger", "usage", "members", "request"])
def test_a_key_of_the_wrong_type_is_refused_and_nothing_is_written(
    seeded: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock, which: str
) -> None:
    keys = store.keys.account("acme")
    key = {
        "state": keys.state,
        "ledger": keys.ledger,
        "usage": keys.usage(clock.now),
        "members": keys.members,
        "request": keys.request("global\x003\x00k1"),
    }[which]
    redis_client.delete(key)
    redis_client.rpush(key, "x")  # a list where a hash, stream or string belongs
    assert (
        charge_refused_writing_nothing(
            store, redis_client, clock.now, idempotency_key="k1", idempotency_window=60
        )
        == key
    )


def test_a_wrong_ledger_type_never_takes_credits_without_an_entry(
    seeded: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock
) -> None:
    # Before: the script took the credits, then failed on XADD: 3 refusals, 15 credits, no entry.
    keys = store.keys.account("acme")
    redis_client.hset(keys.state, "used", 5)  # the allowance is used: the balance pays
    redis_client.delete(keys.ledger)
    redis_client.set(keys.ledger, "not a stream")
    for _ in range(3):
        with pytest.raises(StoreDataError):
            store.charge(ChargeRequest("acme", 5, now=clock.now))
    assert store.account_state("acme").balance == 100


def test_a_usage_counter_that_is_not_an_integer_fails_before_the_charge_is_written(
    seeded: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock
) -> None:
    redis_client.hset(store.keys.account("acme").usage(clock.now), "global|credits", "1.5")
    charge_refused_writing_nothing(store, redis_client, clock.now)


def test_a_folded_ledger_amount_that_does_not_parse_is_refused(
    seeded: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock
) -> None:
    keys = store.keys.account("acme")
    redis_client.xadd(keys.ledger, {"kind": "grant", "amount": "1e3"})
    for _ in range(40):
        redis_client.xadd(keys.ledger, {"kind": "note", "amount": "0"})
    charge_refused_writing_nothing(store, redis_client, clock.now, ledger_retention=10)


ACCOUNT = {"id": "acme", "username": "acme", "custom_id": None}


@pytest.fixture
def redis_timeout_ms() -> int:
    return 500


@pytest.mark.parametrize("fault_tolerant", [True, False])
def test_the_gate_refuses_bad_data_whatever_fault_tolerant_says_and_the_breaker_stays_closed(
    kong: KongSide, own_settings: RedisSettings, funded: Admin, fault_tolerant: bool
) -> None:
    client = redis.Redis(port=own_settings.port)
    state_key = funded.store.keys.account("acme").state
    client.hset(state_key, "balance", "1e3")
    config = gate_config(own_settings, fault_tolerant=fault_tolerant, breaker_failures=3)
    for _ in range(10):
        outcome = kong.request(config, KongRequest(consumer=ACCOUNT))
        assert outcome.status == 500
        body = json.loads(outcome.body)
        validate_problem(body)
        assert body["reason"] == "account_data_invalid"
        assert any(state_key in line and "balance" in line for line in outcome.logs("err"))
    client.hset(state_key, "balance", "1000")  # repaired: charged at once (no open circuit, no pass)
    outcome = kong.request(config, KongRequest(consumer=ACCOUNT))
    assert outcome.proxied and outcome.upstream_headers.get("X-Credit-Plan") == "pro"
    assert funded.account("acme").balance == 999
    client.close()
