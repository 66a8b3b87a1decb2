"""The log phase refunds and settles only what the access phase of the same request charged.

An attacker's tools here: an upstream that echoes the request headers it received (httpbin does), and
a client that sends those headers back on later requests that the gate does not charge (a replayed
Idempotency-Key, a free route, a refusal). None of them may move credit back. Through the real plugin
server (``--log-phase``, threads and gevent) and a real Redis.
"""

from __future__ import annotations

from typing import Any

import pytest

from creditgate.core.config import RedisSettings
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.gate_fixtures import gate_config, through_gate
from tests.harness import KongRequest, KongSide, Outcome
from tests.log_phase_fixtures import ACME, prepaid_acme, settling_info, settling_kong, settling_server  # noqa: F401


@pytest.fixture
def prepaid(admin: Admin) -> Admin:
    return prepaid_acme(admin)


def send(
    kong: KongSide,
    settings: RedisSettings,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **config: Any,
) -> Outcome:
    request = KongRequest(path="/v1/answer", consumer=ACME, headers=headers or {})
    outcome = through_gate(kong, settings, request, status, **config)
    return outcome


def echoed(outcome: Outcome) -> dict[str, str]:
    """Every header the upstream received, as an echoing upstream shows them to the client."""
    return {name: value for name, value in outcome.upstream_headers.items() if isinstance(value, str)}


def balance(store: RedisStore) -> int:
    return store.account_state("acme").balance


def kinds(store: RedisStore) -> list[str]:
    return [e.fields["kind"] for e in store.ledger("acme") if e.fields["kind"] != "period_reset"]


def test_echoed_headers_replayed_on_free_failing_requests_refund_nothing(
    kong: KongSide, settings: RedisSettings, prepaid: Admin, store: RedisStore
) -> None:
    paid = [send(kong, settings, cost=10, refund_on_failure=True) for _ in range(5)]
    assert balance(store) == 50

    # The same headers, sent back on a free route whose upstream fails: nothing was charged, so
    # nothing may be refunded.
    for outcome in paid:
        send(kong, settings, cost=0, refund_on_failure=True, status=500, headers=echoed(outcome))

    assert balance(store) == 50
    assert kinds(store) == ["grant"] + ["charge"] * 5


def test_echoed_headers_replayed_on_refused_requests_refund_nothing(
    kong: KongSide, settings: RedisSettings, prepaid: Admin, store: RedisStore
) -> None:
    policy: dict[str, Any] = {"cost": 10, "refund_on_failure": True, "refund_statuses": ["4xx", "5xx"]}
    paid = [send(kong, settings, **policy) for _ in range(10)]
    assert balance(store) == 0

    for outcome in paid:
        refused = send(kong, settings, headers=echoed(outcome), **policy)
        assert refused.status == 402

    assert balance(store) == 0
    assert kinds(store) == ["grant"] + ["charge"] * 10


def test_a_replayed_idempotent_request_that_fails_refunds_nothing(
    kong: KongSide, settings: RedisSettings, prepaid: Admin, store: RedisStore
) -> None:
    policy: dict[str, Any] = {"cost": 10, "refund_on_failure": True, "idempotency_window": 3600}
    first = send(kong, settings, headers={"Idempotency-Key": "order-1"}, **policy)
    replay = send(
        kong, settings, status=503, headers={**echoed(first), "Idempotency-Key": "order-1"}, **policy
    )

    assert replay.response_headers.get("X-Credit-Replayed") == "true"
    assert balance(store) == 90  # the replay charged nothing, so it gives nothing back


def test_a_client_sent_charge_token_header_is_never_read(
    kong: KongSide, settings: RedisSettings, prepaid: Admin, store: RedisStore
) -> None:
    send(kong, settings, cost=3, refund_on_failure=True)
    charge_id = list(store.ledger("acme"))[-1].id
    forged = {
        "X-Credit-Charge-Token": f"YWNtZQ.{charge_id}.3.0123456789abcdef0123456789abcdef",
        "X-Credit-Charge-Id": charge_id,
    }
    outcome = send(kong, settings, cost=0, refund_on_failure=True, status=500, headers=forged)

    assert "kong.request.get_header" not in outcome.methods_in("log")
    assert balance(store) == 97


def test_the_upstream_sees_nothing_that_names_the_charge_for_the_log_phase(
    kong: KongSide, settings: RedisSettings, prepaid: Admin
) -> None:
    outcome = send(kong, settings, cost=3, refund_on_failure=True)

    assert "x-credit-charge-token" not in {name.lower() for name in echoed(outcome)}


def test_the_charged_request_itself_is_still_refunded(
    kong: KongSide, settings: RedisSettings, prepaid: Admin, store: RedisStore
) -> None:
    send(kong, settings, cost=7, refund_on_failure=True, status=502)
    assert balance(store) == 100
    assert kinds(store) == ["grant", "charge", "refund"]


def test_a_hold_is_settled_from_the_record_of_its_own_request(
    kong: KongSide, settings: RedisSettings, prepaid: Admin, store: RedisStore
) -> None:
    request = KongRequest(path="/v1/answer", consumer=ACME)
    outcome = kong.request(
        gate_config(settings, cost=20, settle_header="X-Cost"), request, 200, {"X-Cost": "4"}
    )
    outcome.assert_clean()
    assert balance(store) == 96


def test_pdk_round_trips_with_the_log_phase_configured(
    kong: KongSide, settings: RedisSettings, prepaid: Admin
) -> None:
    """Charged: one more call than without the log phase (the record); refused or free: none."""
    allowed = send(kong, settings, cost=1, refund_on_failure=True)
    assert allowed.methods_in("access") == [
        "kong.client.get_consumer",
        "kong.service.request.set_headers",
        "kong.ctx.shared.set",
        "kong.response.set_headers",
    ]
    assert allowed.methods_in("log") == ["kong.ctx.shared.get", "kong.response.get_status"]
    assert allowed.round_trips_by_phase == {"access": 5, "log": 3}

    free = send(kong, settings, cost=0, refund_on_failure=True)
    assert "kong.ctx.shared.set" not in free.methods_in("access")
    assert free.methods_in("log") == ["kong.ctx.shared.get"]
    assert free.round_trips_by_phase["log"] == 2

    refused = send(kong, settings, cost=10_000, refund_on_failure=True)
    assert refused.status == 402
    assert refused.round_trips_by_phase == {"access": 2, "log": 2}


def test_without_the_log_phase_configured_nothing_is_recorded(
    kong: KongSide, settings: RedisSettings, prepaid: Admin
) -> None:
    allowed = send(kong, settings, cost=1)
    assert "kong.ctx.shared.set" not in allowed.methods_in("access")
    assert allowed.round_trips_by_phase == {"access": 4, "log": 1}
