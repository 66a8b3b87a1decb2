"""A Redis that lost its data is told from an account that never subscribed.

The operators' tools write a store marker (one per slot on a Cluster, so that a charge reads the one
of its account's slot). Without it, an account with no subscription is answered as an outage (503,
logged), never "402 no_subscription" for every account, and ``credit-gate verify`` fails.
"""

from __future__ import annotations

import json

import pytest
import redis

from creditgate.cli import EXIT_PROBLEMS
from creditgate.core.config import RedisSettings
from creditgate.core.decision import Reason
from creditgate.core.model import Plan
from creditgate.core.policy import ChargeRequest
from creditgate.errors import StoreEmpty
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.cli_support import Cli
from tests.conftest import Clock
from tests.gate_fixtures import gate_config
from tests.harness import KongRequest, KongSide
from tests.redis_servers import RedisServer

ACCOUNT = {"id": "acme", "username": "acme", "custom_id": None}


@pytest.fixture
def redis_timeout_ms() -> int:
    return 500


def test_an_empty_redis_is_not_no_subscription_and_nothing_is_written(
    store: RedisStore, redis_client: redis.Redis, clock: Clock
) -> None:
    with pytest.raises(StoreEmpty):
        store.charge(ChargeRequest("acme", 1, now=clock.now))
    assert redis_client.dbsize() == 0


def test_once_the_operators_set_up_the_store_an_unknown_account_is_no_subscription(
    admin: Admin, store: RedisStore, clock: Clock
) -> None:
    admin.apply_plan(Plan("pro"))
    result = store.charge(ChargeRequest("nobody", 1, now=clock.now))
    assert result.reason is Reason.NO_SUBSCRIPTION


def test_verify_fails_on_an_emptied_store(
    settings: RedisSettings, admin: Admin, redis_client: redis.Redis
) -> None:
    admin.grant("acme", 10)
    cli = Cli(settings)
    assert cli.run("verify").exit_code == 0
    redis_client.flushall()  # Redis restarted without persistence
    result = cli.run("verify")
    assert result.exit_code == EXIT_PROBLEMS
    assert "no credit-gate data" in result.stderr


def test_the_gate_answers_a_redis_restarted_empty_as_an_outage(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin
) -> None:
    config = gate_config(own_settings, breaker_failures=0)
    assert kong.request(config, KongRequest(consumer=ACCOUNT)).proxied
    redis.Redis(port=own_settings.port).flushall()
    outcome = kong.request(config, KongRequest(consumer=ACCOUNT))
    assert outcome.status == 503
    assert json.loads(outcome.body)["reason"] == "store_unavailable"
    assert any("no credit-gate data" in line for line in outcome.logs("err"))
