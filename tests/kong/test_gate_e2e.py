"""The gate end to end: the real plugin server, driven through Kong's protocol, charging a real Redis.

Every test runs by the rules of Kong 3.4, 3.6 and 3.9 (tests/harness/versions.py), on kong-pdk's threads
and gevent modes and on the server of two processes behind one socket.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan, Status
from creditgate.core.periods import Period
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.core.test_decision import validate_problem
from tests.gate_fixtures import (
    KONG_PDK_THREADS,
    MODES,
    PLUGIN_SERVER,
    gate_config,
    kong_side,
    serving,
    through_gate,
)
from tests.harness import KONG_VERSIONS, KongRequest, KongSide, Outcome, PluginInfo, PluginServerProcess

SERVERS = {
    **MODES,
    "kong-pdk-threads": KONG_PDK_THREADS,
    "credit-gate-2-processes": ("--processes", "2"),
    "kong-pdk-2-processes": (*MODES["kong-pdk"], "--processes", "2"),
}


@pytest.fixture(scope="module", params=sorted(SERVERS))
def plugin_server(request: pytest.FixtureRequest) -> Iterator[PluginServerProcess]:
    yield from serving(*SERVERS[request.param])


@pytest.fixture(params=KONG_VERSIONS)
def kong_version(request: pytest.FixtureRequest) -> str:
    version: str = request.param
    return version


@pytest.fixture
def kong(
    plugin_server: PluginServerProcess, plugin_info: PluginInfo, kong_version: str
) -> Iterator[KongSide]:
    yield from kong_side(plugin_server, plugin_info, kong_version)


ACME: dict[str, Any] = {"id": "0b8f5c6e-acme", "username": "acme", "custom_id": "cust-42", "tags": None}


def call(kong: KongSide, settings: RedisSettings, consumer: Any = ACME, **config: Any) -> Outcome:
    request = KongRequest(
        method="GET",
        path="/v1/answer",
        consumer=consumer,
        headers={"X-Credit-Account": "forged", "x-credit-plan": "enterprise"},
        credential=config.pop("credential", None),
    )
    return through_gate(kong, settings, request, clean=False, **config)


def problem(outcome: Outcome) -> dict[str, Any]:
    assert outcome.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = json.loads(outcome.body)
    validate_problem(body)
    assert body["status"] == outcome.status
    return body


@pytest.fixture
def paying(admin: Admin) -> Admin:
    admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=2, prepaid=True))
    admin.subscribe(ACME["id"], "pro", starts_at=admin.now() - 60)
    admin.grant(ACME["id"], 10, note="first top-up")
    return admin


def test_an_allowed_request_is_proxied_charged_and_told_its_figures(
    kong: KongSide, settings: RedisSettings, paying: Admin, store: RedisStore
) -> None:
    outcome = call(kong, settings, cost=3)
    outcome.assert_clean()
    assert outcome.proxied
    assert outcome.response_headers.get("X-Credit-Cost") == "3"
    assert outcome.response_headers.get("X-Credit-Allowance-Remaining") == "0"
    assert outcome.response_headers.get("X-Credit-Balance") == "9"
    assert store.account_state(ACME["id"]).balance == 9


def test_the_upstream_gets_the_account_and_plan_never_the_clients_copies(
    kong: KongSide, settings: RedisSettings, paying: Admin
) -> None:
    outcome = call(kong, settings)
    assert outcome.upstream_headers.get_all("X-Credit-Account") == [ACME["id"]]
    assert outcome.upstream_headers.get_all("X-Credit-Plan") == ["pro"]
    assert outcome.upstream_headers.get("X-Credit-Charge-Id")


def test_an_allowed_request_costs_four_pdk_round_trips_and_a_refused_one_two(
    kong: KongSide, settings: RedisSettings, paying: Admin
) -> None:
    allowed = call(kong, settings)
    refused = call(kong, settings, cost=1000)
    assert allowed.round_trips == 4
    assert allowed.methods == [
        "kong.client.get_consumer",
        "kong.service.request.set_headers",
        "kong.response.set_headers",
    ]
    assert refused.round_trips == 2
    assert refused.methods == ["kong.client.get_consumer", "kong.response.exit"]


def test_hide_client_headers_saves_a_round_trip_and_sends_no_figures(
    kong: KongSide, settings: RedisSettings, paying: Admin
) -> None:
    outcome = call(kong, settings, hide_client_headers=True)
    assert outcome.proxied and outcome.round_trips == 3
    assert outcome.response_headers.get("X-Credit-Balance") is None


def test_a_request_without_an_authenticated_consumer_is_refused_with_401(
    kong: KongSide, settings: RedisSettings, paying: Admin
) -> None:
    outcome = call(kong, settings, consumer=None)
    assert outcome.status == 401
    assert problem(outcome)["reason"] == "unauthenticated"


def test_insufficient_credit_is_a_402_that_charges_nothing(
    kong: KongSide, settings: RedisSettings, paying: Admin, store: RedisStore
) -> None:
    outcome = call(kong, settings, cost=13, payment_url="https://billing.example/top-up")
    assert outcome.status == 402 and not outcome.proxied
    body = problem(outcome)
    assert body["reason"] == "insufficient_credit"
    assert (body["cost"], body["balance"], body["allowance_remaining"]) == (13, 10, 2)
    assert body["payment_url"] == "https://billing.example/top-up"
    assert store.account_state(ACME["id"]).balance == 10


def test_an_account_without_subscription_is_refused_with_no_subscription(
    kong: KongSide, settings: RedisSettings, paying: Admin
) -> None:
    outcome = call(kong, settings, consumer={"id": "stranger", "username": None, "custom_id": None})
    assert outcome.status == 402
    assert problem(outcome)["reason"] == "no_subscription"


def test_a_suspended_subscription_is_refused(kong: KongSide, settings: RedisSettings, paying: Admin) -> None:
    paying.set_status(ACME["id"], Status.SUSPENDED)
    assert problem(call(kong, settings))["reason"] == "subscription_inactive"


def test_an_expired_subscription_is_refused(kong: KongSide, settings: RedisSettings, paying: Admin) -> None:
    paying.subscribe(ACME["id"], "pro", starts_at=paying.now() - 100, expires_at=paying.now() - 1)
    assert problem(call(kong, settings))["reason"] == "subscription_expired"


def test_a_route_sold_in_other_plans_names_them(
    kong: KongSide, settings: RedisSettings, paying: Admin
) -> None:
    body = problem(call(kong, settings, plans=["team", "enterprise"]))
    assert body["reason"] == "plan_not_entitled"
    assert body["plans"] == ["team", "enterprise"]


def test_an_exhausted_quota_says_when_it_renews(
    kong: KongSide, settings: RedisSettings, admin: Admin
) -> None:
    admin.apply_plan(Plan("free", period=Period.DAY, allowance=1, prepaid=False))
    admin.subscribe(ACME["id"], "free", starts_at=admin.now() - 10)
    assert call(kong, settings).proxied
    outcome = call(kong, settings)
    assert problem(outcome)["reason"] == "quota_exhausted"
    assert 0 < int(outcome.headers["Retry-After"]) <= 86_400


@pytest.mark.parametrize(
    ("account_by", "account"),
    [
        ("consumer_username", "username:acme"),
        ("consumer_custom_id", "custom_id:cust-42"),
        ("credential_id", "credential:key-7"),
    ],
)
def test_the_account_can_be_named_by_username_custom_id_or_credential(
    kong: KongSide, settings: RedisSettings, admin: Admin, store: RedisStore, account_by: str, account: str
) -> None:
    admin.apply_plan(Plan("pro"))
    admin.subscribe(account, "pro", starts_at=admin.now() - 10)
    admin.grant(account, 5)
    outcome = call(
        kong, settings, account_by=account_by, credential={"id": "key-7", "consumer": {"id": ACME["id"]}}
    )
    assert outcome.proxied, outcome.body
    assert store.account_state(account).balance == 4


def test_a_consumer_without_the_configured_name_is_unauthenticated(
    kong: KongSide, settings: RedisSettings, paying: Admin
) -> None:
    outcome = call(kong, settings, account_by="consumer_custom_id", consumer={"id": "c", "custom_id": None})
    assert outcome.status == 401


def test_a_free_route_is_proxied_without_a_charge(
    kong: KongSide, settings: RedisSettings, paying: Admin, store: RedisStore
) -> None:
    assert call(kong, settings, cost=0).proxied
    assert store.account_state(ACME["id"]).balance == 10


def test_an_invalid_config_refuses_with_500_and_leaves_the_server_healthy(
    kong: KongSide, settings: RedisSettings, paying: Admin, kong_version: str
) -> None:
    # A prefix of its own: the server says each cause once in its lifetime, and the server is shared.
    broken = call(kong, settings, key_prefix=f"bad{{prefix}}-{kong_version}")
    assert broken.status == 500 and problem(broken)["reason"] == "misconfigured"
    assert any("key_prefix" in line for line in broken.logs("err"))
    assert call(kong, settings).proxied


def test_a_config_change_starts_a_new_instance_with_the_new_cost(
    kong: KongSide, settings: RedisSettings, paying: Admin, store: RedisStore
) -> None:
    plugin = gate_config(settings, cost=1)
    request = KongRequest(consumer=ACME)
    kong.request(plugin, request)
    kong.request(plugin.changed(cost=4), KongRequest(consumer=ACME))
    # The allowance of 2 pays the first request and 1 of the second; the balance pays the other 3.
    assert store.account_state(ACME["id"]).balance == 10 - 3
    assert len(kong.closed_instance_ids) == 1


def test_every_request_is_charged_after_the_plugin_server_restarts(
    kong: KongSide, settings: RedisSettings, paying: Admin, store: RedisStore, plugin_server: Any
) -> None:
    assert call(kong, settings).proxied
    plugin_server.restart()
    assert call(kong, settings).proxied
    assert store.account_state(ACME["id"]).used == 2


def test_the_problem_schema_rejects_a_body_without_a_reason() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate_problem({"type": "urn:x", "title": "t", "status": 402, "detail": "d"})


def test_with_an_upstream_configured_only_allowed_requests_are_routed_to_it(
    kong: KongSide, settings: RedisSettings, paying: Admin
) -> None:
    allowed = call(kong, settings, upstream="paid-api")
    refused = call(kong, settings, upstream="paid-api", cost=1000)
    assert allowed.upstream_name == "paid-api"
    assert allowed.methods[:3] == [
        "kong.client.get_consumer",
        "kong.service.request.set_headers",
        "kong.service.set_upstream",
    ]
    assert refused.upstream_name is None


@pytest.mark.server
def test_the_server_refuses_kong_pdks_process_mode_instead_of_hanging() -> None:
    argv = [*PLUGIN_SERVER, "-m", "--kong-prefix", tempfile.gettempdir()]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "process mode (-m) cannot run this plugin" in result.stderr


def test_charging_goes_on_after_a_script_flush_in_the_plugin_server(
    kong: KongSide, settings: RedisSettings, paying: Admin, store: RedisStore, redis_client: Any
) -> None:
    assert call(kong, settings).proxied
    redis_client.script_flush()  # as after a Redis restart or a failover: the script cache is empty
    assert call(kong, settings).proxied
    assert call(kong, settings).proxied
    assert store.account_state(ACME["id"]).used == 2 and store.account_state(ACME["id"]).balance == 9
