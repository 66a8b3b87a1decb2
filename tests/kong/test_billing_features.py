"""Billing semantics past a plain charge, end to end through Kong's protocol and a real Redis:
refunds on failure, hold then settle, idempotent requests, cost rules, pooled balances, warnings,
shadow mode and the IETF RateLimit fields. The plugin server runs with ``--log-phase``."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.core.test_decision import validate_problem
from tests.gate_fixtures import gate_config, start_plugin_server, through_gate
from tests.harness import KongRequest, KongSide, Outcome, PluginInfo
from tests.log_phase_fixtures import ACME, prepaid_acme, settling_info, settling_kong, settling_server  # noqa: F401


@pytest.fixture
def funded(admin: Admin) -> Admin:
    return prepaid_acme(admin)


def send(
    kong: KongSide,
    settings: RedisSettings,
    *,
    consumer: Any = ACME,
    method: str = "GET",
    path: str = "/v1/answer",
    headers: dict[str, str] | None = None,
    status: int = 200,
    upstream_headers: dict[str, str] | None = None,
    **config: Any,
) -> Outcome:
    request = KongRequest(method=method, path=path, consumer=consumer, headers=headers or {})
    return through_gate(kong, settings, request, status, upstream_headers, clean=False, **config)


def balance(store: RedisStore, account: str = "acme") -> int:
    return store.account_state(account).balance


def kinds(store: RedisStore, account: str = "acme") -> list[str]:
    return [e.fields["kind"] for e in store.ledger(account) if e.fields["kind"] != "period_reset"]


# No charge for failed calls


def test_an_upstream_5xx_is_refunded_in_the_log_phase(
    kong: KongSide, settings: RedisSettings, funded: Admin, store: RedisStore
) -> None:
    outcome = send(kong, settings, cost=7, refund_on_failure=True, status=503)
    outcome.assert_clean()
    assert balance(store) == 100
    assert kinds(store) == ["grant", "charge", "refund"]
    refund = next(e for e in store.ledger("acme") if e.fields["kind"] == "refund")
    charge = next(e for e in store.ledger("acme") if e.fields["kind"] == "charge")
    assert refund.fields["reference"] == charge.id and refund.amount == 7
    assert funded.verify_ledger("acme").ok
    assert any(k.endswith("|refunded") for k in store.usage("acme", int(time.time())))


def test_a_successful_response_is_not_refunded(
    kong: KongSide, settings: RedisSettings, funded: Admin, store: RedisStore
) -> None:
    send(kong, settings, cost=7, refund_on_failure=True, status=200).assert_clean()
    assert balance(store) == 93


def test_only_the_configured_statuses_are_refunded(
    kong: KongSide, settings: RedisSettings, funded: Admin, store: RedisStore
) -> None:
    send(kong, settings, cost=5, refund_on_failure=True, refund_statuses=["502", "504"], status=503)
    send(kong, settings, cost=5, refund_on_failure=True, refund_statuses=["502", "504"], status=502)
    assert balance(store) == 95


def test_a_refund_gives_back_the_periods_allowance_too(
    kong: KongSide, settings: RedisSettings, admin: Admin, store: RedisStore
) -> None:
    admin.apply_plan(Plan("daily", period=Period.DAY, allowance=10, prepaid=False))
    admin.subscribe("acme", "daily", starts_at=admin.now() - 60)
    send(kong, settings, cost=4, refund_on_failure=True, status=500)
    assert store.account_state("acme").used == 0


# A client cannot get a charge refunded by replaying headers: tests/kong/test_log_phase_trust.py.


def test_refund_on_failure_without_the_log_phase_refuses_with_misconfigured(
    settings: RedisSettings, funded: Admin, plugin_info: PluginInfo
) -> None:
    server = start_plugin_server()
    try:
        with KongSide(server.socket_path, plugin_info, timeout=10.0) as plain:
            outcome = send(plain, settings, refund_on_failure=True)
    finally:
        server.stop()
    assert outcome.status == 500
    assert json.loads(outcome.body)["reason"] == "misconfigured"
    assert any("--log-phase" in line for line in outcome.logs("err"))


# Hold, then settle


def test_a_hold_settles_to_the_cost_the_upstream_reports(
    kong: KongSide, settings: RedisSettings, funded: Admin, store: RedisStore
) -> None:
    outcome = send(
        kong, settings, cost=50, settle_header="X-Usage-Cost", upstream_headers={"X-Usage-Cost": "12"}
    )
    outcome.assert_clean()
    assert outcome.response_headers.get("X-Credit-Cost") == "50"  # what was held when the call began
    assert balance(store) == 88
    assert kinds(store) == ["grant", "charge", "settle"]
    assert funded.verify_ledger("acme").ok


@pytest.mark.parametrize("reported", [None, "-3", "99999999999999999999", "twelve", "12.5", "51"])
def test_a_missing_or_bad_settle_header_settles_at_the_hold_and_is_logged(
    kong: KongSide, settings: RedisSettings, funded: Admin, store: RedisStore, reported: str | None
) -> None:
    upstream = {"X-Usage-Cost": reported} if reported is not None else {}
    outcome = send(kong, settings, cost=50, settle_header="X-Usage-Cost", upstream_headers=upstream)
    assert balance(store) == 50
    assert any("X-Usage-Cost" in line for line in outcome.logs("warn"))
    assert kinds(store) == ["grant", "charge"]


def test_a_failed_call_under_a_hold_is_refunded_whole(
    kong: KongSide, settings: RedisSettings, funded: Admin, store: RedisStore
) -> None:
    send(
        kong,
        settings,
        cost=50,
        settle_header="X-Usage-Cost",
        refund_on_failure=True,
        status=502,
        upstream_headers={"X-Usage-Cost": "12"},
    )
    assert balance(store) == 100


def test_a_hold_not_settled_in_time_is_final_at_its_full_amount(
    kong: KongSide, settings: RedisSettings, funded: Admin, store: RedisStore
) -> None:
    plugin = gate_config(settings, cost=50, settle_header="X-Usage-Cost", settle_timeout=1)
    run = kong.new_run(KongRequest(consumer=ACME))
    kong.run_phase(plugin, "access", run)
    run.proxy(200, {"X-Usage-Cost": "1"})
    time.sleep(2.1)  # the settlement arrives after settle_timeout
    outcome = kong.run_phase(plugin, "log", run)
    assert balance(store) == 50
    assert any("late" in line for line in outcome.logs("warn"))


# Idempotent requests


def test_two_concurrent_requests_with_one_idempotency_key_are_charged_once(
    kong: KongSide, settings: RedisSettings, funded: Admin, store: RedisStore
) -> None:
    def retry(_: int) -> Outcome:
        return send(kong, settings, cost=10, idempotency_window=60, headers={"Idempotency-Key": "order-77"})

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(retry, range(2)))
    assert all(o.proxied for o in outcomes)
    assert balance(store) == 90
    assert sorted(o.response_headers.get("X-Credit-Cost") or "" for o in outcomes) == ["0", "10"]
    assert [o.response_headers.get("X-Credit-Replayed") for o in outcomes].count("true") == 1


def test_idempotency_keys_are_scoped_per_account(
    kong: KongSide, settings: RedisSettings, funded: Admin, store: RedisStore
) -> None:
    funded.subscribe("other", "pro", starts_at=funded.now() - 60)
    funded.grant("other", 100)
    other = {"id": "other", "username": "other", "custom_id": None}
    send(kong, settings, cost=10, idempotency_window=60, headers={"Idempotency-Key": "k"})
    send(kong, settings, consumer=other, cost=10, idempotency_window=60, headers={"Idempotency-Key": "k"})
    assert balance(store) == 90 and balance(store, "other") == 90


def test_a_refunded_request_retried_with_its_key_is_charged_again(
    kong: KongSide, settings: RedisSettings, funded: Admin, store: RedisStore
) -> None:
    options: dict[str, Any] = {"cost": 10, "idempotency_window": 60, "refund_on_failure": True}
    send(kong, settings, headers={"Idempotency-Key": "k"}, status=503, **options)
    send(kong, settings, headers={"Idempotency-Key": "k"}, status=200, **options)
    assert balance(store) == 90


# Cost rules


def test_cost_rules_price_by_method_and_path_first_match_wins(
    kong: KongSide, settings: RedisSettings, funded: Admin, store: RedisStore
) -> None:
    rules = [
        {"methods": ["POST"], "path": "/v1/completions", "cost": 20},
        {"path": "/v1/models/*", "cost": 0},
        {"methods": ["POST", "PUT"], "cost": 5},
    ]
    paid = {
        ("POST", "/v1/completions"): 20,
        ("GET", "/v1/models/gpt"): 0,
        ("GET", "/v1/models/gpt/versions"): 1,
        ("PUT", "/v1/files/a"): 5,
        ("GET", "/v1/files/a"): 1,
    }
    for (method, path), cost in paid.items():
        before = balance(store)
        outcome = send(kong, settings, method=method, path=path, cost=1, costs=rules)
        assert outcome.proxied
        assert before - balance(store) == cost, (method, path)


# Pooled balances


def open_pool(admin: Admin, balance: int, period: Period = Period.MONTH) -> None:
    """The pool account "team-a", on a prepaid plan of its own, with a balance its members draw from."""
    admin.apply_plan(Plan("team", period=period, allowance=0, prepaid=True))
    admin.subscribe("team-a", "team", starts_at=admin.now() - 60)
    admin.grant("team-a", balance)


def member(name: str, pool: str = "team-a") -> dict[str, Any]:
    return {"id": name, "username": name, "custom_id": None, "tags": [f"credit-pool:{pool}", "other-tag"]}


def test_pool_members_draw_from_the_pools_balance(
    kong: KongSide, settings: RedisSettings, admin: Admin, store: RedisStore
) -> None:
    open_pool(admin, 30)
    outcome = send(kong, settings, consumer=member("ann"), cost=4, pool_tag_prefix="credit-pool:")
    assert outcome.upstream_headers.get("X-Credit-Account") == "team-a"
    assert outcome.upstream_headers.get("X-Credit-Member") == "ann"
    assert balance(store, "team-a") == 26
    charge = next(e for e in store.ledger("team-a") if e.fields["kind"] == "charge")
    assert charge.fields["member"] == "ann"


def test_a_pool_drained_by_many_members_at_once_never_goes_negative_and_caps_hold(
    kong: KongSide, settings: RedisSettings, admin: Admin, store: RedisStore
) -> None:
    open_pool(admin, 50)
    admin.set_member_cap("team-a", "m0", 5)
    names = [f"m{i}" for i in range(5)]

    def spend(i: int) -> Outcome:
        return send(kong, settings, consumer=member(names[i % 5]), cost=1, pool_tag_prefix="credit-pool:")

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(spend, range(80)))
    reasons = [json.loads(o.body)["reason"] for o in outcomes if not o.proxied]
    allowed = [o for o in outcomes if o.proxied]
    assert len(allowed) == 50 and balance(store, "team-a") == 0
    assert set(reasons) <= {"insufficient_credit", "member_cap_reached"}
    charges = [e for e in store.ledger("team-a") if e.fields["kind"] == "charge"]
    assert sum(1 for e in charges if e.fields["member"] == "m0") <= 5
    assert admin.verify_ledger("team-a").ok


def test_a_member_over_its_cap_gets_a_402_that_says_so(
    kong: KongSide, settings: RedisSettings, admin: Admin, store: RedisStore
) -> None:
    open_pool(admin, 50, Period.DAY)
    admin.set_member_cap("team-a", "bob", 3)
    assert send(kong, settings, consumer=member("bob"), cost=3, pool_tag_prefix="credit-pool:").proxied
    outcome = send(kong, settings, consumer=member("bob"), cost=1, pool_tag_prefix="credit-pool:")
    body = json.loads(outcome.body)
    validate_problem(body)
    assert body["reason"] == "member_cap_reached"
    assert int(outcome.headers["Retry-After"]) <= 86_400


# Warnings before the wall


def test_an_allowed_request_warns_when_the_balance_runs_low(
    kong: KongSide, settings: RedisSettings, funded: Admin
) -> None:
    quiet = send(kong, settings, cost=10, warn_balance_below=50)
    loud = send(kong, settings, cost=45, warn_balance_below=50)
    assert quiet.response_headers.get("X-Credit-Warning") is None
    assert loud.response_headers.get("X-Credit-Warning") == "low_balance"


def test_warnings_for_a_low_allowance_and_a_subscription_ending_soon(
    kong: KongSide, settings: RedisSettings, admin: Admin
) -> None:
    admin.apply_plan(Plan("daily", period=Period.DAY, allowance=10, prepaid=False))
    now = int(time.time())  # the plugin's clock, not the operators' test clock
    admin.subscribe("acme", "daily", starts_at=now - 60, expires_at=now + 86_400)
    outcome = send(kong, settings, cost=8, warn_allowance_below=5, warn_expiry_days=2)
    assert outcome.response_headers.get("X-Credit-Warning") == "low_allowance, subscription_expiring"


# Shadow mode


def test_shadow_mode_never_refuses_never_charges_and_counts_would_be_refusals(
    kong: KongSide, settings: RedisSettings, funded: Admin, store: RedisStore
) -> None:
    fine = send(kong, settings, cost=10, enforce=False)
    too_dear = send(kong, settings, cost=1000, enforce=False)
    stranger = send(kong, settings, consumer={"id": "nobody"}, enforce=False)
    assert fine.proxied and too_dear.proxied and stranger.proxied
    assert fine.response_headers.get("X-Credit-Shadow") == "would_charge; cost=10"
    assert too_dear.response_headers.get("X-Credit-Shadow") == "would_refuse; reason=insufficient_credit"
    assert any("would refuse" in line for line in too_dear.logs("notice"))
    assert balance(store) == 100 and kinds(store) == ["grant"]
    usage = store.usage("acme", int(time.time()))
    assert usage["route:route-1|shadow_refused"] == 1 and usage["route:route-1|shadow_allowed"] == 1


# Standard rate headers


def test_rate_limit_fields_describe_the_allowance_in_credits(
    kong: KongSide, settings: RedisSettings, admin: Admin
) -> None:
    admin.apply_plan(Plan("daily", period=Period.DAY, allowance=10, prepaid=False))
    admin.subscribe("acme", "daily", starts_at=admin.now() - 60)
    allowed = send(kong, settings, cost=4, rate_limit_headers=True)
    assert allowed.response_headers.get("RateLimit-Policy") == '"daily";q=10;w=86400;qu="credits"'
    limit = allowed.response_headers.get("RateLimit") or ""
    assert limit.startswith('"daily";r=6;t=')
    refused = send(kong, settings, cost=7, rate_limit_headers=True)
    assert refused.status == 402
    assert refused.headers["RateLimit"].startswith('"daily";r=6;t=')
    assert 0 < int(refused.headers["Retry-After"]) <= 86_400


# What each feature costs


def test_round_trips_per_feature(kong: KongSide, settings: RedisSettings, funded: Admin) -> None:
    """PDK round trips per allowed request, HandleEvent included, access and log phases together."""
    base = send(kong, settings).round_trips_by_phase
    assert base == {"access": 4, "log": 1}  # a --log-phase server: one HandleEvent for nothing
    assert send(kong, settings, costs=[{"path": "/v1/*", "cost": 2}]).round_trips_by_phase["access"] == 5
    assert send(kong, settings, idempotency_window=60).round_trips_by_phase["access"] == 5
    refund = send(kong, settings, refund_on_failure=True).round_trips_by_phase
    assert refund == {"access": 5, "log": 3}  # + kong.ctx.shared.set: the charge, for the log phase
    settle = send(kong, settings, settle_header="X-Usage-Cost", upstream_headers={"X-Usage-Cost": "0"})
    assert settle.round_trips_by_phase == {"access": 5, "log": 4}
    assert send(kong, settings, upstream="paid").round_trips_by_phase["access"] == 5


def test_an_idempotency_key_does_not_carry_over_to_another_route_or_cost(
    kong: KongSide, settings: RedisSettings, funded: Admin, store: RedisStore
) -> None:
    key = {"Idempotency-Key": "k"}
    send(kong, settings, cost=1, idempotency_window=60, headers=key)
    send(kong, settings, cost=30, idempotency_window=60, headers=key)
    send(kong, settings, cost=30, idempotency_window=60, headers=key, route_id="route-2")
    assert balance(store) == 100 - 1 - 30 - 30
