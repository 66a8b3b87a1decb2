"""Which account an identity pays from: one namespace per kind of identity, and names of any length.

A consumer whose custom_id is "bob" is not the consumer whose username is "bob": each kind of
identity Kong gives has its own namespace (``username:bob``, ``custom_id:bob``), unless the operator
shares one on purpose (``account_namespace``). Kong sets no length limit on a username or custom_id,
so neither does credit-gate: long names are billable and their Redis keys stay bounded.
Through the real plugin server, a real Redis and the installed CLI.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from creditgate.core.config import RedisSettings, parse_config
from creditgate.core.model import Plan
from creditgate.errors import ConfigError
from creditgate.ops.admin import Admin
from creditgate.store.keys import READABLE_NAME, account_keys
from creditgate.store.store import RedisStore
from tests.cli_support import Cli
from tests.gate_fixtures import through_gate
from tests.harness import KongRequest, KongSide, Outcome

BOB_ID = "0b0b0b0b-0000-4000-8000-000000000001"
BOB = {"id": BOB_ID, "username": "bob", "custom_id": None, "tags": None}
# Another consumer, whose custom_id happens to be the first one's username.
CAROL = {"id": "ca401000-0000-4000-8000-000000000002", "username": "carol", "custom_id": "bob", "tags": None}


def call(kong: KongSide, settings: RedisSettings, consumer: Any, **config: Any) -> Outcome:
    request = KongRequest(path="/v1/answer", consumer=consumer)
    outcome = through_gate(kong, settings, request, **config)
    return outcome


def reason(outcome: Outcome) -> str:
    body = json.loads(outcome.body)
    assert isinstance(body["reason"], str)
    return body["reason"]


@pytest.fixture
def bob_funded(admin: Admin) -> Admin:
    admin.apply_plan(Plan("pro"))
    admin.subscribe("username:bob", "pro", starts_at=admin.now() - 10)
    admin.grant("username:bob", 100)
    return admin


def test_a_custom_id_is_never_charged_to_the_account_of_an_equal_username(
    kong: KongSide, settings: RedisSettings, bob_funded: Admin, store: RedisStore
) -> None:
    outcome = call(kong, settings, CAROL, account_by="consumer_custom_id", cost=10)

    assert outcome.status == 402 and reason(outcome) == "no_subscription"
    assert store.account_state("username:bob").balance == 100


def test_each_kind_pays_from_its_own_namespace(
    kong: KongSide, settings: RedisSettings, bob_funded: Admin, store: RedisStore
) -> None:
    bob_funded.subscribe("custom_id:bob", "pro", starts_at=bob_funded.now() - 10)
    bob_funded.grant("custom_id:bob", 50)

    by_username = call(kong, settings, BOB, account_by="consumer_username", cost=1)
    by_custom_id = call(kong, settings, CAROL, account_by="consumer_custom_id", cost=2)

    assert by_username.upstream_headers.get("X-Credit-Account") == "username:bob"
    assert by_custom_id.upstream_headers.get("X-Credit-Account") == "custom_id:bob"
    assert store.account_state("username:bob").balance == 99
    assert store.account_state("custom_id:bob").balance == 48


def test_consumer_ids_stay_bare_as_before_namespaces(
    kong: KongSide, settings: RedisSettings, admin: Admin, store: RedisStore
) -> None:
    admin.apply_plan(Plan("pro"))
    admin.subscribe(BOB_ID, "pro", starts_at=admin.now() - 10)
    admin.grant(BOB_ID, 5)

    assert call(kong, settings, BOB, cost=1).proxied
    assert store.account_state(BOB_ID).balance == 4


def test_an_operator_shares_one_namespace_on_purpose(
    kong: KongSide, settings: RedisSettings, admin: Admin, store: RedisStore
) -> None:
    admin.apply_plan(Plan("pro"))
    admin.subscribe("people:bob", "pro", starts_at=admin.now() - 10)
    admin.grant("people:bob", 10)

    call(kong, settings, BOB, account_by="consumer_username", account_namespace="people", cost=1)
    call(kong, settings, CAROL, account_by="consumer_custom_id", account_namespace="people", cost=2)

    assert store.account_state("people:bob").balance == 7


def test_an_empty_namespace_gives_bare_names(
    kong: KongSide, settings: RedisSettings, admin: Admin, store: RedisStore
) -> None:
    admin.apply_plan(Plan("pro"))
    admin.subscribe("bob", "pro", starts_at=admin.now() - 10)
    admin.grant("bob", 10)

    assert call(kong, settings, BOB, account_by="consumer_username", account_namespace="", cost=3).proxied
    assert store.account_state("bob").balance == 7


@pytest.mark.parametrize("namespace", ["has space", "a:b", "{tag}", "x" * 65])
def test_a_namespace_that_could_collide_or_break_a_key_is_refused(namespace: str) -> None:
    with pytest.raises(ConfigError, match="account_namespace"):
        parse_config({"account_by": "consumer_username", "account_namespace": namespace})


def test_an_invalid_namespace_refuses_every_request_as_misconfigured(
    kong: KongSide, settings: RedisSettings, bob_funded: Admin
) -> None:
    outcome = call(kong, settings, BOB, account_by="consumer_username", account_namespace="a:b")
    assert outcome.status == 500 and reason(outcome) == "misconfigured"


# Names of any length


LONG = "u" * 150 + "-ü-{}:%-" + "v" * 200  # 358 characters, with every character a key must encode


def test_a_consumer_with_a_300_character_username_is_billable_through_the_cli_and_the_gate(
    kong: KongSide, settings: RedisSettings, admin: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    account = f"username:{LONG}"
    admin.apply_plan(Plan("pro", allowance=0, prepaid=True))
    cli = Cli(settings)
    cli.ok("subscribe", account, "pro")
    cli.ok("grant", account, "20", "--key", "opening")

    outcome = call(kong, settings, {**BOB, "username": LONG}, account_by="consumer_username", cost=5)

    assert outcome.proxied, outcome.body
    assert store.account_state(account).balance == 15
    assert "15" in cli.ok("balance", account).stdout
    assert [a["account"] for a in cli.json("accounts")] == [account]  # the full name, not its hash
    assert max(len(key) for key in redis_client.keys("*")) < 200


def test_long_names_are_tagged_by_their_hash_and_short_ones_keep_their_readable_tag() -> None:
    short = "a" * READABLE_NAME
    assert account_keys("p", short).state == "p:{" + short + "}:account"
    long_keys = account_keys("p", short + "b")
    assert long_keys.state.startswith("p:{#") and len(long_keys.state) == len("p:{#}:account") + 64
    assert account_keys("p", short + "c").state != long_keys.state


def test_a_long_name_never_meets_a_short_name_that_looks_like_its_tag() -> None:
    long_name = "z" * (READABLE_NAME + 1)
    tag = account_keys("p", long_name).base.split("{", 1)[1].rstrip(":}")
    assert account_keys("p", tag).base != account_keys("p", long_name).base  # '#' is encoded in a name
