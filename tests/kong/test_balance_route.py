"""The balance role end to end: the real plugin server, driven through Kong's protocol, on a real Redis.

An entry with ``role: balance`` answers the authenticated consumer with its own account and ends the
request: never proxied, never charged, never another account's figures, and no made-up balance when
Redis fails. It costs what a refused request costs: two PDK round trips and one Redis round trip.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.core.test_decision import validate_problem
from tests.gate_fixtures import PLUGIN_SERVER, gate_config, start_plugin_server, through_gate
from tests.harness import KongRequest, KongSide, Outcome, PluginInfo
from tests.money.test_data_errors import snapshot
from tests.redis_servers import RedisServer
from tests.store.test_balance import validate_balance

ACME = {"id": "acme", "username": "acme", "custom_id": None, "tags": None}
GLOBEX = {"id": "globex", "username": "globex", "custom_id": None, "tags": None}


def ask(kong: KongSide, settings: RedisSettings, consumer: Any = ACME, **config: Any) -> Outcome:
    """A request to the balance route, with a client's attempts to name another account."""
    request = KongRequest(
        path="/balance",
        query="account=globex",
        consumer=consumer,
        credential=config.pop("credential", None),
        headers={"X-Credit-Account": "globex", "X-Credit-Member": "bob"},
    )
    outcome = through_gate(kong, settings, request, role="balance", **config)
    assert not outcome.proxied and outcome.exit_method == "kong.response.exit"
    return outcome


def answer(outcome: Outcome) -> dict[str, Any]:
    assert outcome.status == 200, (outcome.body, outcome.log_lines)
    assert outcome.headers["Content-Type"] == "application/json"
    assert outcome.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = json.loads(outcome.body)
    validate_balance(body)
    return body


def problem(outcome: Outcome) -> dict[str, Any]:
    assert outcome.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = json.loads(outcome.body)
    validate_problem(body)
    assert body["status"] == outcome.status
    return body


@pytest.fixture
def two_accounts(admin: Admin) -> Admin:
    """acme: 2 credits a month included and 10 prepaid; globex: another plan and balance."""
    admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=2, prepaid=True))
    admin.apply_plan(Plan("team", period=Period.DAY, allowance=500, prepaid=False))
    admin.subscribe("acme", "pro", starts_at=admin.now() - 60)
    admin.subscribe("globex", "team", starts_at=admin.now() - 60)
    admin.grant("acme", 10)
    admin.grant("globex", 999)
    return admin


def test_the_consumer_is_answered_with_its_own_account_and_nothing_is_proxied(
    kong: KongSide, settings: RedisSettings, two_accounts: Admin
) -> None:
    body = answer(ask(kong, settings))
    assert (body["account"], body["plan"], body["status"]) == ("acme", "pro", "active")
    assert (body["balance"], body["allowance"], body["allowance_remaining"]) == (10, 2, 2)
    assert body["member"] is None  # the client's X-Credit-Member names nobody
    other = answer(ask(kong, settings, consumer=GLOBEX))
    assert (other["account"], other["plan"], other["balance"]) == ("globex", "team", 999)


def test_the_answer_follows_the_charges_of_the_gate(
    kong: KongSide, settings: RedisSettings, two_accounts: Admin
) -> None:
    charged = kong.request(gate_config(settings, cost=3), KongRequest(consumer=ACME))
    assert charged.proxied
    body = answer(ask(kong, settings))
    assert (body["balance"], body["allowance_used"], body["allowance_remaining"]) == (9, 2, 0)
    assert body["balance"] == int(charged.response_headers.get("X-Credit-Balance") or -1)
    assert body["period_end"] == charged.response_headers.get("X-Credit-Period-End")


@pytest.fixture(scope="module")
def refunding_kong() -> Iterator[KongSide]:
    """A plugin server with the log phase, where the gate refunds a failed call."""
    info = PluginInfo.query([*PLUGIN_SERVER, "--log-phase"])
    server = start_plugin_server("--log-phase")
    try:
        with KongSide(server.socket_path, info, timeout=10.0) as side:
            yield side
    finally:
        server.stop()


def test_the_periods_usage_follows_the_charges_and_a_refund_of_the_gate(
    refunding_kong: KongSide, settings: RedisSettings, two_accounts: Admin
) -> None:
    kong = refunding_kong
    before = answer(ask(kong, settings))["usage"]
    assert before == {"requests": 0, "credits": 0, "from_allowance": 0, "from_balance": 0}
    for _ in range(3):  # 2 + 1 from the allowance, then 3 + 3 from the balance
        assert kong.request(gate_config(settings, cost=3), KongRequest(consumer=ACME)).proxied
    refunded = kong.request(
        gate_config(settings, cost=2, refund_on_failure=True), KongRequest(consumer=ACME), upstream_status=503
    )
    assert refunded.proxied and refunded.client_status == 503
    refunded.assert_clean()
    body = answer(ask(kong, settings))
    assert body["usage"] == {"requests": 3, "credits": 9, "from_allowance": 2, "from_balance": 7}
    assert (body["balance"], body["allowance_used"]) == (3, 2)
    for _ in range(4):  # asking is never a request of the period
        assert answer(ask(kong, settings, cost=5))["usage"] == body["usage"]
    other = answer(ask(kong, settings, consumer=GLOBEX))["usage"]
    assert other == {"requests": 0, "credits": 0, "from_allowance": 0, "from_balance": 0}


def test_asking_charges_nothing_and_writes_nothing(
    kong: KongSide, settings: RedisSettings, two_accounts: Admin, redis_client: redis.Redis, store: RedisStore
) -> None:
    ask(kong, settings)  # the script is loaded: from here on nothing may change
    before = snapshot(redis_client)
    for _ in range(5):
        ask(kong, settings, cost=7)
    assert snapshot(redis_client) == before  # balance, period use, usage counters and ledger alike
    assert store.account_state("acme").balance == 10
    assert [e.fields["kind"] for e in store.ledger("acme")] == ["grant"]


def test_no_authenticated_consumer_is_refused_with_401(
    kong: KongSide, settings: RedisSettings, two_accounts: Admin
) -> None:
    for outcome in (
        ask(kong, settings, consumer=None),
        ask(kong, settings, consumer={"id": None, "username": None}),
        ask(kong, settings, account_by="credential_id"),  # a consumer, but no credential
    ):
        assert outcome.status == 401
        assert problem(outcome)["reason"] == "unauthenticated"
        assert outcome.round_trips == 2


def test_the_identity_is_named_as_the_gate_names_it(
    kong: KongSide, settings: RedisSettings, two_accounts: Admin
) -> None:
    two_accounts.grant("username:acme", 4)
    by_username = answer(ask(kong, settings, account_by="consumer_username"))
    assert (by_username["account"], by_username["balance"], by_username["plan"]) == ("username:acme", 4, None)
    bare = answer(ask(kong, settings, account_by="consumer_username", account_namespace=""))
    assert (bare["account"], bare["balance"]) == ("acme", 10)
    two_accounts.grant("credential:key-1", 6)
    by_key = answer(ask(kong, settings, account_by="credential_id", credential={"id": "key-1"}))
    assert (by_key["account"], by_key["balance"]) == ("credential:key-1", 6)


def test_a_pool_member_sees_the_pools_balance_and_only_its_own_cap_and_use(
    kong: KongSide, settings: RedisSettings, admin: Admin
) -> None:
    admin.apply_plan(Plan("team", period=Period.MONTH, allowance=0, prepaid=True))
    admin.subscribe("team-a", "team", starts_at=admin.now() - 60)
    admin.grant("team-a", 30)
    admin.set_member_cap("team-a", "ann", 10)
    pool = {"pool_tag_prefix": "credit-pool:"}

    def member(name: str) -> dict[str, Any]:
        return {"id": name, "username": name, "custom_id": None, "tags": ["credit-pool:team-a"]}

    for name, cost in (("ann", 4), ("bob", 7)):
        assert kong.request(
            gate_config(settings, cost=cost, **pool), KongRequest(consumer=member(name))
        ).proxied
    ann = answer(ask(kong, settings, consumer=member("ann"), **pool))
    assert (ann["account"], ann["balance"], ann["plan"]) == ("team-a", 19, "team")
    assert ann["member"] == {"name": "ann", "used": 4, "requests": 1, "cap": 10, "remaining": 6}
    bob = answer(ask(kong, settings, consumer=member("bob"), **pool))
    assert bob["member"] == {"name": "bob", "used": 7, "requests": 1, "cap": None, "remaining": None}
    assert bob["usage"] == {"requests": 2, "credits": 11, "from_allowance": 0, "from_balance": 11}
    assert "ann" not in json.dumps(bob)


def test_warnings_follow_the_entrys_settings(
    kong: KongSide, settings: RedisSettings, two_accounts: Admin
) -> None:
    assert answer(ask(kong, settings))["warnings"] == []
    assert answer(ask(kong, settings, warn_balance_below=11, warn_allowance_below=3))["warnings"] == [
        "low_balance",
        "low_allowance",
    ]


def test_bad_data_is_a_500_that_names_the_key_in_kongs_log_never_a_figure(
    kong: KongSide, settings: RedisSettings, two_accounts: Admin, redis_client: redis.Redis, store: RedisStore
) -> None:
    state = store.keys.account("acme").state
    redis_client.hset(state, "balance", "1e3")
    outcome = ask(kong, settings, fault_tolerant=True)
    assert outcome.status == 500
    assert problem(outcome)["reason"] == "account_data_invalid"
    assert any(state in line for line in outcome.logs("err"))


def test_an_emptied_redis_is_a_503_not_an_empty_account(
    kong: KongSide, settings: RedisSettings, two_accounts: Admin, redis_client: redis.Redis
) -> None:
    redis_client.flushall()
    outcome = ask(kong, settings)
    assert outcome.status == 503
    assert problem(outcome)["reason"] == "store_unavailable"


def test_a_consumer_with_a_broken_config_gets_the_gates_500(kong: KongSide, settings: RedisSettings) -> None:
    outcome = ask(kong, settings, key_prefix="{bad}")
    assert outcome.status == 500
    assert problem(outcome)["reason"] == "misconfigured"


# Redis down, and what a request costs


@pytest.fixture
def redis_timeout_ms() -> int:
    return 150


@pytest.mark.parametrize("fault_tolerant", [False, True])
def test_redis_down_is_a_503_problem_never_a_made_up_balance(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin, fault_tolerant: bool
) -> None:
    consumer = {"id": "acme", "username": "acme"}
    config = {"breaker_failures": 0, "fault_tolerant": fault_tolerant}
    assert answer(ask(kong, own_settings, consumer, **config))["balance"] == 1000
    own_redis.stop()
    outcome = ask(kong, own_settings, consumer, **config)
    assert outcome.status == 503
    body = problem(outcome)
    assert body["reason"] == "store_unavailable" and "balance" not in body
    assert outcome.headers["Retry-After"] == "1"
    assert any("store unavailable" in line for line in outcome.logs("err"))
    own_redis.start()  # empty (no persistence): still a 503, never "no subscription, 0 credits"
    assert problem(ask(kong, own_settings, consumer, **config))["reason"] == "store_unavailable"
    funded.apply_plan(Plan("pro"))
    funded.subscribe("acme", "pro", starts_at=funded.now() - 10)
    funded.grant("acme", 5)
    assert answer(ask(kong, own_settings, consumer, **config))["balance"] == 5


def redis_counters(client: redis.Redis) -> tuple[int, int, dict[str, int]]:
    """Requests Redis read, replies it wrote, and calls per command (a script's own commands included)."""
    info: dict[str, Any] = client.info("stats", "commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items() if k.startswith("cmdstat_")}
    return int(info["total_reads_processed"]), int(info["total_writes_processed"]), calls


def test_an_answer_costs_two_pdk_round_trips_and_one_redis_round_trip(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    consumer = {"id": "acme", "username": "acme"}
    ask(kong, own_settings, consumer)  # the connection is open and the script loaded
    counting = own_redis.client()
    counting.ping()  # its own connection is open too: nothing of its set-up falls inside
    reads, writes, calls = redis_counters(counting)
    outcome = ask(kong, own_settings, consumer)
    after_reads, after_writes, after_calls = redis_counters(counting)
    counting.close()
    assert answer(outcome)["balance"] == 1000
    assert outcome.round_trips == 2
    assert outcome.methods == ["kong.client.get_consumer", "kong.response.exit"]
    # Minus one each for the readings themselves (INFO: its request, then its reply, fall inside).
    assert (after_reads - reads - 1, after_writes - writes - 1) == (1, 1)
    sent = {k: v - calls.get(k, 0) for k, v in after_calls.items() if v != calls.get(k, 0)}
    assert sent.pop("info") == 1
    assert sent.pop("evalsha") == 1
    assert (
        "hset" not in sent and "hincrby" not in sent and "xadd" not in sent
    )  # inside the script: reads only
