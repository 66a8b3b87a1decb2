"""The request policy with plain values: who pays, what a request is charged, what shadow mode and
``fault_tolerant`` do, which headers go upstream and which to the client, and what the log phase gives
back. No Kong and no Redis: a config, the facts Kong gave, and the store's answer."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from creditgate.core import policy
from creditgate.core.config import GateConfig, parse_config
from creditgate.core.decision import ChargeResult, Reason
from creditgate.core.policy import (
    DEFAULT_TYPE_BASE,
    ChargeRequest,
    Proxy,
    RequestFacts,
    Respond,
    account_of,
    charge_record,
    charge_request,
    decided,
    internal_error,
    misconfigured,
    payer_of,
    read_charge_record,
    refunds,
    settlement,
    store_failed,
    unauthenticated,
)
from creditgate.core.pricing import MAX_PATH_LENGTH
from creditgate.errors import StoreDataError, StoreError, StoreTimeout, StoreUnavailable
from tests.core.test_decision import NOW, result, validate_problem

ACME = {"id": "c-1", "username": "acme", "custom_id": "crm-7", "tags": None}


def config(**raw: Any) -> GateConfig:
    return parse_config(raw)


def request_for(cfg: GateConfig, identity: Any = ACME, **facts: Any) -> ChargeRequest:
    request = charge_request(cfg, RequestFacts(identity, **facts))
    assert isinstance(request, ChargeRequest), request
    return request


def allowed(**changes: Any) -> ChargeResult:
    return result(
        None, **{"charge_id": "1767225600000-0", "balance": 40, "allowance_remaining": 7, **changes}
    )


def proxied(action: Any) -> Proxy:
    assert isinstance(action, Proxy), action
    return action


def refused(action: Any) -> Respond:
    assert isinstance(action, Respond), action
    return action


# Who pays


@pytest.mark.parametrize(
    ("account_by", "account"),
    [
        ("consumer_id", "c-1"),
        ("consumer_username", "username:acme"),
        ("consumer_custom_id", "custom_id:crm-7"),
        ("credential_id", "credential:c-1"),
    ],
)
def test_the_account_is_named_by_the_configured_identity_in_its_namespace(
    account_by: str, account: str
) -> None:
    assert request_for(config(account_by=account_by)).account == account


def test_an_operator_named_namespace_replaces_the_default_one() -> None:
    assert request_for(config(account_by="consumer_username", account_namespace="")).account == "acme"
    assert request_for(config(account_namespace="eu")).account == "eu:c-1"


@pytest.mark.parametrize(
    "identity", [None, {}, {"id": ""}, {"id": 7}, {"username": "acme"}, ["id", "c-1"], "c-1"]
)
def test_a_request_without_a_usable_identity_is_refused_with_401(identity: Any) -> None:
    cfg = config()
    assert charge_request(cfg, RequestFacts(identity)) is None  # no one pays
    action = unauthenticated(cfg)
    assert action.problem.status == 401
    assert action.problem.body["reason"] == "unauthenticated"
    assert action.log is None  # a client's mistake, not the operator's


def test_a_consumer_tagged_with_a_pool_draws_from_the_pool_and_is_named_as_its_member() -> None:
    cfg = config(pool_tag_prefix="pool:")
    member = {"id": "c-1", "tags": ["staff", "pool:team-a", "pool:team-b"]}
    request = request_for(cfg, member)
    assert (request.account, request.member) == ("team-a", "c-1")  # the first pool tag wins


@pytest.mark.parametrize("tags", [None, [], ["pool:"], ["staff"], [7, None], ["POOL:team-a"]])
def test_without_a_pool_tag_the_account_pays_for_itself(tags: Any) -> None:
    request = request_for(config(pool_tag_prefix="pool:"), {"id": "c-1", "tags": tags})
    assert (request.account, request.member) == ("c-1", "")


def test_pool_tags_mean_nothing_without_a_pool_tag_prefix() -> None:
    assert request_for(config(), {"id": "c-1", "tags": ["pool:team-a"]}).account == "c-1"


def test_payer_of_and_account_of_take_plain_values() -> None:
    assert payer_of({"tags": ["p.x"]}, "bob", "p.") == ("x", "bob")
    assert payer_of(None, "bob", "p.") == ("bob", "")
    assert account_of({"id": "c-1"}, parse_config({}).account_by) == "c-1"


# What a request is charged


def test_a_request_costs_the_flat_cost_unless_a_cost_rule_matches_it() -> None:
    cfg = config(cost=3, costs=[{"methods": ["POST"], "path": "/v1/chat/*", "cost": 20}])
    assert request_for(cfg, method="POST", path="/v1/chat/x").cost == 20
    assert request_for(cfg, method="GET", path="/v1/chat/x").cost == 3
    assert request_for(config(cost=0)).cost == 0


def test_a_path_longer_than_the_cost_rules_consider_is_refused_with_414_and_nothing_charged() -> None:
    cfg = config(cost=1, costs=[{"path": "/v1/**/files/**/versions/**/download", "cost": 20}])
    longest = "/v1/" + "a" * (MAX_PATH_LENGTH - 4)
    assert request_for(cfg, method="GET", path=longest).cost == 1
    answer = charge_request(cfg, RequestFacts(ACME, "GET", longest + "a"))
    assert isinstance(answer, Respond)
    assert answer.problem.status == 414 == Reason.PATH_TOO_LONG.status
    assert answer.problem.body["reason"] == "path_too_long"
    assert f"{MAX_PATH_LENGTH + 1} characters" in answer.problem.body["detail"]
    assert "Nothing was charged" in answer.problem.body["detail"]
    validate_problem(answer.problem.body)


def test_a_crafted_path_under_the_bound_is_priced_without_backtracking() -> None:
    cfg = config(cost=1, costs=[{"path": "/v1/**/files/**/versions/**/download", "cost": 20}])
    crafted = ("/v1/" + "files/versions/" * 600)[: MAX_PATH_LENGTH - 1] + "x"
    assert request_for(cfg, method="GET", path=crafted).cost == 1
    assert request_for(cfg, method="GET", path=crafted[:-10] + "/download").cost == 20


def test_in_shadow_mode_a_path_too_long_is_proxied_and_said_to_be_one_that_would_be_refused() -> None:
    cfg = config(enforce=False, costs=[{"path": "/v1/*", "cost": 2}])
    answer = charge_request(cfg, RequestFacts(ACME, "GET", "/v1/" + "a" * MAX_PATH_LENGTH))
    assert isinstance(answer, Proxy)
    assert answer.client == {"X-Credit-Shadow": "would_refuse; reason=path_too_long"}
    assert answer.upstream["X-Credit-Account"] == "c-1" and answer.upstream["X-Credit-Charge-Id"] == ""


def test_a_long_path_is_refused_only_by_an_entry_whose_rules_read_the_path() -> None:
    cfg = config(cost=3, costs=[{"methods": ["POST"], "cost": 20}])
    assert request_for(cfg, method="POST", path="/" + "a" * MAX_PATH_LENGTH).cost == 20
    assert request_for(config(cost=3), path="/" + "a" * MAX_PATH_LENGTH).cost == 3
    assert (
        charge_request(config(costs=[{"path": "/v1/*", "cost": 2}]), RequestFacts(None, "GET", "/" * 9000))
        is None
    )


def test_the_charge_carries_the_instances_plans_route_retention_and_no_clock_of_its_own() -> None:
    raw = {"plans": ["pro", "team"], "route_id": "r-9", "ledger_retention": 500}
    request = request_for(parse_config(raw))
    assert request.entitled == ("pro", "team")
    assert request.route == "route:r-9"
    assert request.ledger_retention == 500
    assert request.now is None  # Redis's clock decides, the same for every gateway node
    assert request_for(parse_config({"service_id": "s-1"})).route == "service:s-1"
    assert request_for(config()).route == "global"


def test_a_clock_given_to_the_policy_decides_the_charges_time() -> None:
    request = charge_request(config(), RequestFacts(ACME), NOW)
    assert isinstance(request, ChargeRequest) and request.now == NOW


def test_an_enforcing_charge_is_final_and_kept_for_no_settlement() -> None:
    request = request_for(config())
    assert (request.shadow, request.hold_seconds, request.settle_window) == (False, 0, 0)
    assert request.idempotency_window == 0 and request.idempotency_key is None


def test_shadow_mode_asks_for_a_shadow_charge_never_settled() -> None:
    request = request_for(config(enforce=False, refund_on_failure=True, settle_header="X-Cost"))
    assert request.shadow
    assert request.settle_window == 0  # nothing was charged: nothing to refund


def test_an_idempotency_key_goes_with_the_window() -> None:
    request = request_for(config(idempotency_window=600), idempotency_key="k-1")
    assert (request.idempotency_key, request.idempotency_window) == ("k-1", 600)


def test_a_refundable_charge_is_kept_a_day_at_least_and_a_hold_for_the_settle_timeout() -> None:
    assert request_for(config(refund_on_failure=True)).settle_window == 86_400
    assert request_for(config(refund_on_failure=True, settle_timeout=86_400)).settle_window == 86_400
    held = request_for(config(settle_header="X-Cost", settle_timeout=120))
    assert (held.hold_seconds, held.settle_window) == (120, 86_400)


# What the store's answer means for the request


def test_an_allowed_request_is_proxied_with_the_account_plan_and_charge_upstream() -> None:
    cfg = config()
    action = proxied(decided(cfg, request_for(cfg), allowed()))
    assert action.upstream == {
        "X-Credit-Account": "c-1",
        "X-Credit-Plan": "pro",
        "X-Credit-Charge-Id": "1767225600000-0",
        "X-Credit-Member": "",  # a client's copy is cleared
    }
    assert action.client is not None
    assert action.client["X-Credit-Cost"] == "3" and action.client["X-Credit-Balance"] == "40"
    assert action.log is None and action.charge is None and action.route_to is None


def test_a_pool_members_request_names_the_member_upstream() -> None:
    cfg = config(pool_tag_prefix="pool:")
    request = request_for(cfg, {"id": "c-1", "tags": ["pool:team-a"]})
    upstream = proxied(decided(cfg, request, allowed())).upstream
    assert (upstream["X-Credit-Account"], upstream["X-Credit-Member"]) == ("team-a", "c-1")


def test_hide_client_headers_sends_the_client_nothing() -> None:
    cfg = config(hide_client_headers=True)
    assert proxied(decided(cfg, request_for(cfg), allowed())).client is None


def test_hidden_figures_still_carry_a_warning_and_the_rate_limit_fields_when_asked() -> None:
    cfg = config(hide_client_headers=True, warn_balance_below=50, rate_limit_headers=True)
    client = proxied(decided(cfg, request_for(cfg), allowed())).client
    assert client is not None
    assert client["X-Credit-Warning"] == "low_balance"
    assert client["RateLimit"] == '"pro";r=7;t=3600'
    assert "X-Credit-Balance" not in client


@pytest.mark.parametrize(
    ("raw", "changes", "warning"),
    [
        ({"warn_balance_below": 41}, {}, "low_balance"),
        ({"warn_balance_below": 40}, {}, None),  # below, not at
        ({"warn_allowance_below": 8}, {}, "low_allowance"),
        ({"warn_allowance_below": 8}, {"allowance": 0, "allowance_remaining": 0}, None),  # no allowance
        ({"warn_expiry_days": 2}, {"expires_at": NOW + 2 * 86_400}, "subscription_expiring"),
        ({"warn_expiry_days": 2}, {"expires_at": NOW + 2 * 86_400 + 1}, None),
        ({"warn_expiry_days": 2}, {"expires_at": 0}, None),  # never expires
        (
            {"warn_balance_below": 41, "warn_allowance_below": 8, "warn_expiry_days": 1},
            {"expires_at": NOW + 60},
            "low_balance, low_allowance, subscription_expiring",
        ),
    ],
)
def test_warnings_name_each_wall_the_account_is_nearing(
    raw: dict[str, Any], changes: dict[str, Any], warning: str | None
) -> None:
    cfg = config(**raw)
    client = proxied(decided(cfg, request_for(cfg), allowed(**changes))).client
    assert client is not None
    assert client.get("X-Credit-Warning") == warning


def test_a_replayed_request_costs_nothing_and_records_no_charge_to_refund() -> None:
    cfg = config(refund_on_failure=True, idempotency_window=60)
    action = proxied(decided(cfg, request_for(cfg, idempotency_key="k"), allowed(replayed=True)))
    assert action.client is not None
    assert action.client["X-Credit-Cost"] == "0" and action.client["X-Credit-Replayed"] == "true"
    assert action.charge is None


def test_a_refundable_charge_is_recorded_for_the_log_phase() -> None:
    cfg = config(refund_on_failure=True)
    action = proxied(decided(cfg, request_for(cfg), allowed()))
    assert action.charge is not None
    assert read_charge_record(action.charge) == ("c-1", "1767225600000-0", 3)
    free = proxied(decided(cfg, request_for(cfg), allowed(charge_id="", cost=0)))
    assert free.charge is None  # nothing charged, nothing to give back


def test_an_allowed_request_is_routed_to_the_paid_upstream_when_one_is_configured() -> None:
    cfg = config(upstream="paid")
    assert proxied(decided(cfg, request_for(cfg), allowed())).route_to == "paid"


def test_a_refused_request_gets_the_402_with_its_reason_and_the_instances_links() -> None:
    cfg = config(
        plans=["team"], payment_url="https://billing.example/pay", problem_type_base="https://e.x/p/"
    )
    action = refused(decided(cfg, request_for(cfg), result(Reason.PLAN_NOT_ENTITLED)))
    body = action.problem.body
    assert action.problem.status == 402
    assert body["type"] == "https://e.x/p/plan_not_entitled"
    assert body["plans"] == ["team"] and body["payment_url"] == "https://billing.example/pay"
    assert action.log is None


def test_a_refusal_carries_the_rate_limit_fields_when_asked() -> None:
    cfg = config(rate_limit_headers=True)
    action = refused(decided(cfg, request_for(cfg), result(Reason.QUOTA_EXHAUSTED)))
    assert action.problem.headers["RateLimit"] == '"pro";r=0;t=3600'
    assert action.problem.headers["Retry-After"] == "3600"


def test_a_refusal_in_the_same_state_is_the_same_answer_built_once_and_encoded_with_it() -> None:
    cfg = config(payment_url="https://billing.example/pay")
    first = refused(decided(cfg, request_for(cfg), result(Reason.INSUFFICIENT_CREDIT)))
    again = refused(decided(cfg, request_for(cfg), result(Reason.INSUFFICIENT_CREDIT)))
    assert again is first
    assert first.encoded == first.problem.encoded()
    assert json.loads(first.encoded) == first.problem.body


def test_a_refusal_in_another_state_or_through_another_config_is_built_for_it() -> None:
    cfg, other = config(), config(problem_type_base="https://e.x/p/")
    first = refused(decided(cfg, request_for(cfg), result(Reason.INSUFFICIENT_CREDIT)))
    later = refused(decided(cfg, request_for(cfg), result(Reason.INSUFFICIENT_CREDIT)._replace(now=NOW + 1)))
    poorer = refused(decided(cfg, request_for(cfg), result(Reason.INSUFFICIENT_CREDIT)._replace(balance=2)))
    elsewhere = refused(decided(other, request_for(other), result(Reason.INSUFFICIENT_CREDIT)))
    assert later is not first and poorer is not first
    assert poorer.problem.body["balance"] == 2
    assert elsewhere.problem.body["type"] == "https://e.x/p/insufficient_credit"


def test_the_refusals_a_config_keeps_are_bounded() -> None:
    cfg = config()
    for balance in range(policy.REFUSALS_KEPT + 10):
        decided(cfg, request_for(cfg), result(Reason.INSUFFICIENT_CREDIT)._replace(balance=balance))
    assert 0 < len(cfg.refusals) <= policy.REFUSALS_KEPT


# Shadow mode


def test_shadow_mode_proxies_what_it_would_charge_and_sends_no_charge_upstream() -> None:
    cfg = config(enforce=False)
    action = proxied(decided(cfg, request_for(cfg), allowed(charge_id="")))
    assert action.client == {"X-Credit-Shadow": "would_charge; cost=3"}
    assert action.upstream["X-Credit-Plan"] == "" and action.upstream["X-Credit-Charge-Id"] == ""
    assert action.log is None and action.charge is None


def test_shadow_mode_proxies_what_it_would_refuse_and_logs_it_at_notice() -> None:
    cfg = config(enforce=False, upstream="paid")
    action = proxied(decided(cfg, request_for(cfg), result(Reason.INSUFFICIENT_CREDIT)))
    assert action.client == {"X-Credit-Shadow": "would_refuse; reason=insufficient_credit"}
    assert action.log == "credit-gate shadow: would refuse account 'c-1' with insufficient_credit"
    assert action.log_level == "notice"
    assert action.route_to == "paid"


# The failure policy


def test_redis_down_refuses_with_503_and_a_retry_after_the_breakers_cool_down() -> None:
    cfg = config()
    action = refused(store_failed(cfg, request_for(cfg), StoreUnavailable("open", retry_after_ms=2_001)))
    assert action.problem.status == 503
    assert action.problem.body["reason"] == "store_unavailable"
    assert action.problem.headers["Retry-After"] == "3"
    assert action.log is not None and "refused with 503" in action.log and action.log_level == "err"


def test_a_timeout_asks_for_a_retry_a_second_later() -> None:
    cfg = config()
    action = refused(store_failed(cfg, request_for(cfg), StoreTimeout("slow")))
    assert action.problem.headers["Retry-After"] == "1"


@pytest.mark.parametrize("raw", [{"fault_tolerant": True}, {"enforce": False}])
def test_fault_tolerant_or_shadow_proxies_unmetered_when_redis_is_down(raw: dict[str, Any]) -> None:
    cfg = config(upstream="paid", **raw)
    action = proxied(store_failed(cfg, request_for(cfg), StoreError("Redis failed: refused")))
    assert action.upstream == {
        "X-Credit-Account": "c-1",
        "X-Credit-Plan": "",
        "X-Credit-Charge-Id": "",
        "X-Credit-Member": "",
    }
    assert action.client is None and action.charge is None and action.route_to == "paid"
    assert action.log is not None and "UNMETERED" in action.log and action.log_level == "warn"


@pytest.mark.parametrize("raw", [{}, {"fault_tolerant": True}, {"enforce": False}])
def test_bad_data_is_refused_with_500_whatever_fault_tolerant_says(raw: dict[str, Any]) -> None:
    cfg = config(**raw)
    error = StoreDataError("bad data in Redis: key k field balance: is not an integer", key="k")
    action = refused(store_failed(cfg, request_for(cfg), error))
    assert action.problem.status == 500
    assert action.problem.body["reason"] == "account_data_invalid"
    assert action.log == f"credit-gate: account 'c-1' refused with 500, {error}"


def test_an_invalid_config_refuses_with_500_under_the_default_type_base() -> None:
    action = misconfigured()
    assert action.problem.status == 500
    assert action.problem.body["type"] == DEFAULT_TYPE_BASE + "misconfigured"
    assert action.log is None  # said once when the instance starts, not per request


def test_a_bug_refuses_with_500_and_says_what_it_was() -> None:
    action = internal_error(config(problem_type_base="https://e.x/p/"), KeyError("id"))
    assert action.problem.status == 500 and action.problem.body["type"] == "https://e.x/p/internal_error"
    assert action.log == "credit-gate: internal error, request refused with 500: KeyError: 'id'"
    assert internal_error(None, ValueError()).problem.body["type"] == DEFAULT_TYPE_BASE + "internal_error"


# The log phase


@pytest.mark.parametrize(
    "record",
    [
        None,
        7,
        "",
        "not json",
        "{}",
        '["acme", "1-0"]',
        '["acme", "1-0", -1]',
        '["acme", "1-0", 1.5]',
        '["acme", "1-0", true]',
        '[7, "1-0", 1]',
    ],
)
def test_only_a_record_of_ours_is_read_as_a_charge(record: object) -> None:
    assert read_charge_record(record) is None


def test_a_charge_record_reads_back_as_written() -> None:
    record = charge_record("team-a", "1767225600000-0", 12)
    assert json.loads(record) == ["team-a", "1767225600000-0", 12]
    assert read_charge_record(record) == ("team-a", "1767225600000-0", 12)


def test_the_configured_statuses_refund() -> None:
    cfg = config(refund_on_failure=True, refund_statuses=["5xx", "429"])
    assert [s for s in (200, 404, 429, 500, 503) if refunds(cfg, s)] == [429, 500, 503]
    assert not refunds(config(), 500)  # refund_on_failure off
    assert refunds(config(refund_on_failure=True), 502)  # 5xx unless told otherwise


def test_a_refund_gives_the_whole_charge_back_within_a_day_at_least() -> None:
    cfg = config(refund_on_failure=True, settle_timeout=60)
    assert settlement(cfg, 12, refund=True) == (0, True, 86_400, None)


@pytest.mark.parametrize(
    ("reported", "final", "note"),
    [
        ("4", 4, None),
        (" 4 ", 4, None),
        ("0", 0, None),
        ("99", 12, "settle header X-Cost: 99 is above the hold of 12; settled at the hold"),
        (None, 12, "settle header X-Cost: missing; settled at the hold"),
        ("4.5", 12, "settle header X-Cost: not a whole non-negative number: '4.5'; settled at the hold"),
    ],
)
def test_a_hold_settles_to_the_reported_cost_within_the_settle_timeout(
    reported: object, final: int, note: str | None
) -> None:
    cfg = config(settle_header="X-Cost", settle_timeout=120)
    assert settlement(cfg, 12, refund=False, reported=reported) == (final, False, 120, note)


# The core stays pure


@pytest.mark.server
def test_the_policy_imports_neither_kong_nor_redis() -> None:
    program = (
        "import sys, creditgate.core.policy; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'redis', 'kong_pdk', 'gevent'}))"
    )
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
