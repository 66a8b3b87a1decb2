"""The HTTP API against the running service (uvicorn, real HTTP) and a real Redis.

Every endpoint answers what the CLI would, errors are RFC 9457 problem bodies with stable codes, and a
credit-moving write applies once per Idempotency-Key, also when its retries race.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from creditgate.core.config import RedisSettings
from creditgate.errors import ConfigError
from creditgate.service.server import build
from tests.redis_servers import RedisServer
from tests.service.test_webhooks import GENERIC, post_generic
from tests.service_support import ADMIN_TOKEN, READ_TOKEN, Running, running_service

PLAN = {"name": "pro", "period": "month", "allowance": 100, "prepaid": True, "title": "Pro"}
PROBLEM = "application/problem+json"


@pytest.fixture
def api(settings: RedisSettings) -> Iterator[Running]:
    with running_service(settings) as running:
        yield running


def problem(response: requests.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, object] = response.json()
    assert body["code"] == code and body["status"] == status
    assert body["type"] == f"urn:credit-gate:problem:{code}" and body["detail"]
    return body


def subscribed(api: Running, account: str = "acme") -> None:
    assert api.call("POST", "/v1/plans", json=PLAN).status_code == 200
    assert api.call("PUT", f"/v1/accounts/{account}/subscription", json={"plan": "pro"}).status_code == 200


def grant(api: Running, account: str, amount: int, key: str) -> requests.Response:
    return api.call(
        "POST", f"/v1/accounts/{account}/grants", json={"amount": amount}, headers={"Idempotency-Key": key}
    )


def test_plans_are_applied_listed_shown_and_deleted(api: Running) -> None:
    applied = api.call("POST", "/v1/plans", json={"plans": [PLAN, {**PLAN, "name": "free", "allowance": 5}]})
    assert [p["name"] for p in applied.json()] == ["pro", "free"]
    assert sorted(p["name"] for p in api.call("GET", "/v1/plans").json()) == ["free", "pro"]
    put = api.call("PUT", "/v1/plans/free", json={"period": "day", "allowance": 7})
    assert put.json()["allowance"] == 7 and put.json()["period"] == "day"
    assert api.call("PUT", "/v1/accounts/a1/subscription", json={"plan": "free"}).status_code == 200
    assert api.call("GET", "/v1/plans/free").json()["subscribed_accounts"] == 1
    assert api.call("GET", "/v1/plans/free/subscribers").json()["accounts"] == ["a1"]
    problem(api.call("DELETE", "/v1/plans/free"), 409, "conflict")
    assert api.call("DELETE", "/v1/plans/free", params={"force": "true"}).json() == {"deleted": "free"}
    gone = problem(api.call("GET", "/v1/plans/free"), 404, "not_found")
    assert gone["detail"] == "no plan named 'free'"  # no advice to run a CLI command over HTTP


def test_a_bad_plan_is_refused_with_the_schemas_words_and_nothing_is_written(api: Running) -> None:
    body = problem(
        api.call("POST", "/v1/plans", json=[PLAN, {**PLAN, "name": "x", "allowance": 1.5}]),
        422,
        "invalid_input",
    )
    assert "allowance" in str(body["detail"])
    assert api.call("GET", "/v1/plans").json() == []
    problem(api.call("PUT", "/v1/plans/pro", json={**PLAN, "name": "other"}), 422, "invalid_input")


def test_subscriptions_plan_changes_and_status(api: Running) -> None:
    subscribed(api)
    api.call("POST", "/v1/plans", json={**PLAN, "name": "max", "allowance": 1000})
    sub = api.call(
        "PUT",
        "/v1/accounts/acme/subscription",
        json={"plan": "pro", "status": "trialing", "starts_at": "2026-01-01", "expires_at": 1_900_000_000},
    ).json()
    assert sub["status"] == "trialing" and sub["starts_at"] == "2026-01-01T00:00:00Z"
    assert api.call("GET", "/v1/accounts/acme/subscription").json()["plan"] == "pro"
    moved = api.call("PUT", "/v1/accounts/acme/subscription/plan", json={"plan": "max"}).json()
    assert moved["previous_plan"] == "pro" and moved["plan"] == "max"
    status = api.call("PUT", "/v1/accounts/acme/subscription/status", json={"status": "suspended"}).json()
    assert status == {"account": "acme", "status": "suspended", "previous_status": "trialing"}
    problem(
        api.call("PUT", "/v1/accounts/acme/subscription/status", json={"status": "gone"}),
        422,
        "invalid_input",
    )
    problem(api.call("PUT", "/v1/accounts/acme/subscription", json={"plan": "nope"}), 404, "not_found")
    problem(
        api.call("PUT", "/v1/accounts/acme/subscription", json={"plan": "pro", "x": 1}), 422, "invalid_input"
    )
    problem(api.call("PUT", "/v1/accounts/ghost/subscription/plan", json={"plan": "max"}), 404, "not_found")


def test_grants_and_adjustments_move_credit_once_per_key(api: Running) -> None:
    subscribed(api)
    first = grant(api, "acme", 500, "invoice-1")
    assert first.status_code == 201 and first.json()["applied"] and first.json()["balance"] == 500
    again = grant(api, "acme", 500, "invoice-1")
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["ledger_id"] == first.json()["ledger_id"] and again.json()["balance"] == 500
    taken = api.call(
        "POST",
        "/v1/accounts/acme/adjustments",
        json={"amount": 200, "note": "refund"},
        headers={"Idempotency-Key": "r-1"},
    )
    assert taken.status_code == 201 and taken.json()["balance"] == 300 and taken.json()["amount"] == -200
    too_much = api.call(
        "POST", "/v1/accounts/acme/adjustments", json={"amount": 301}, headers={"Idempotency-Key": "r-2"}
    )
    problem(too_much, 409, "conflict")
    assert api.call("GET", "/v1/accounts/acme").json()["balance"] == 300


def test_concurrent_retries_of_one_grant_count_once(api: Running) -> None:
    subscribed(api)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: grant(api, "acme", 70, "race-key"), range(32)))
    assert sorted(a.status_code for a in answers) == [200] * 31 + [201]
    assert len({a.json()["ledger_id"] for a in answers}) == 1
    assert api.call("GET", "/v1/accounts/acme").json()["balance"] == 70
    with ThreadPoolExecutor(16) as pool:
        taken = list(
            pool.map(
                lambda _: api.call(
                    "POST",
                    "/v1/accounts/acme/adjustments",
                    json={"amount": 30},
                    headers={"Idempotency-Key": "take"},
                ),
                range(16),
            )
        )
    assert sum(t.status_code == 201 for t in taken) == 1
    assert api.call("GET", "/v1/accounts/acme").json()["balance"] == 40
    assert api.call("GET", "/v1/accounts/acme/ledger/verify").json()["ok"] is True


def test_a_key_reused_with_another_amount_is_refused_with_409_idempotency_error(api: Running) -> None:
    subscribed(api)
    first = grant(api, "acme", 500, "invoice-1").json()
    body = problem(grant(api, "acme", 300, "invoice-1"), 409, "idempotency_error")
    assert first["ledger_id"] in str(body["detail"]) and "500" in str(body["detail"])
    taken = api.call(
        "POST",
        "/v1/accounts/acme/adjustments",
        json={"amount": 500},
        headers={"Idempotency-Key": "invoice-1"},
    )
    problem(taken, 409, "idempotency_error")
    assert api.call("GET", "/v1/accounts/acme").json()["balance"] == 500


def test_a_replay_answers_the_first_amount_and_ledger_id(api: Running) -> None:
    subscribed(api)
    first = grant(api, "acme", 500, "invoice-1").json()
    again = grant(api, "acme", 500, "invoice-1")
    assert again.status_code == 200 and again.json() == {**first, "applied": False}


def test_an_api_key_named_like_a_webhook_event_does_not_swallow_the_paid_webhook(
    settings: RedisSettings,
) -> None:
    environ = {"CREDIT_GATE_ADMIN_TOKENS": ADMIN_TOKEN, "CREDIT_GATE_WEBHOOK_SECRET": GENERIC}
    with running_service(settings, environ=environ) as api:
        subscribed(api)
        assert grant(api, "acme", 100, "webhook:inv-42").status_code == 201
        paid = post_generic(api, {"id": "inv-42", "type": "grant", "account": "acme", "amount": 500})
        assert paid.json()["outcome"] == "applied"
        assert api.call("GET", "/v1/accounts/acme").json()["balance"] == 600


def test_a_credit_write_without_an_idempotency_key_is_refused(api: Running) -> None:
    subscribed(api)
    problem(api.call("POST", "/v1/accounts/acme/grants", json={"amount": 5}), 400, "idempotency_key_required")
    problem(grant(api, "acme", 5, "bad key with spaces"), 422, "invalid_input")
    assert api.call("GET", "/v1/accounts/acme").json()["balance"] == 0


def test_amounts_are_whole_credits_within_bounds(api: Running) -> None:
    subscribed(api)
    for amount in (0, -1, 1.5, "10", True, 10**16, None):
        problem(grant(api, "acme", amount, f"k-{amount}"), 422, "invalid_input")  # type: ignore[arg-type]
    assert api.call("GET", "/v1/accounts/acme").json()["balance"] == 0


def test_unknown_accounts_are_404_and_create_holds_credit(api: Running) -> None:
    problem(api.call("GET", "/v1/accounts/ghost"), 404, "not_found")
    problem(api.call("GET", "/v1/accounts/ghost/ledger"), 404, "not_found")
    problem(grant(api, "ghost", 5, "g"), 404, "not_found")
    held = api.call(
        "POST",
        "/v1/accounts/ghost/grants",
        json={"amount": 5, "create": True},
        headers={"Idempotency-Key": "g"},
    )
    assert held.status_code == 201 and api.call("GET", "/v1/accounts/ghost").json()["balance"] == 5
    problem(api.call("GET", "/v1/nowhere"), 404, "not_found")


def test_the_account_list_pages(api: Running) -> None:
    api.call("POST", "/v1/plans", json=PLAN)
    names = [f"acct-{i:02d}" for i in range(7)]
    for name in names:
        api.call("PUT", f"/v1/accounts/{name}/subscription", json={"plan": "pro"})
    seen, cursor = [], None
    while True:
        page = api.call(
            "GET", "/v1/accounts", params={"limit": 3, **({"after": cursor} if cursor else {})}
        ).json()
        seen += [a["account"] for a in page["accounts"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == names


def test_the_ledger_pages_both_ways_without_gaps_or_repeats(api: Running) -> None:
    subscribed(api)
    ids = [grant(api, "acme", i + 1, f"k{i}").json()["ledger_id"] for i in range(9)]
    for order, expected in (("asc", ids), ("desc", ids[::-1])):
        seen, cursor = [], None
        while True:
            params = {"limit": 4, "order": order, **({"cursor": cursor} if cursor else {})}
            page = api.call("GET", "/v1/accounts/acme/ledger", params=params).json()
            seen += [e["ledger_id"] for e in page["entries"] if e["kind"] == "grant"]
            cursor = page["next"]
            if cursor is None:
                break
        assert seen == expected
    problem(api.call("GET", "/v1/accounts/acme/ledger", params={"cursor": "x"}), 422, "invalid_input")
    problem(api.call("GET", "/v1/accounts/acme/ledger", params={"since": "yesterday"}), 422, "invalid_input")


def test_verify_names_the_ledger_entry_the_balance_was_checked_through(api: Running) -> None:
    subscribed(api)
    grant(api, "acme", 5, "k1")
    newest = grant(api, "acme", 7, "k2").json()["ledger_id"]
    check = api.call("GET", "/v1/accounts/acme/ledger/verify", token=READ_TOKEN).json()
    assert check == {
        "account": "acme",
        "balance": 12,
        "replayed": 12,
        "entries": 2,
        "through": newest,
        "ok": True,
    }


def test_usage_export_and_pool_caps(api: Running) -> None:
    subscribed(api)
    grant(api, "acme", 10, "k1")
    grant(api, "acme", 20, "k2")
    assert api.call("GET", "/v1/usage").json() == {"rows": [], "next": None}
    problem(api.call("GET", "/v1/usage", params={"account": "ghost"}), 404, "not_found")
    lines = api.call("GET", "/v1/export", params={"account": "acme"}).text.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["amount"] for r in records if r["kind"] == "grant"] == [10, 20]
    assert all(r["id"].startswith("acme/") for r in records)
    csv_text = api.call("GET", "/v1/export", params={"format": "csv"})
    assert csv_text.headers["content-type"].startswith("text/csv") and csv_text.text.startswith("id,account")
    events = [
        json.loads(x)
        for x in api.call("GET", "/v1/export", params={"format": "cloudevents"}).text.splitlines()
    ]
    assert {e["type"] for e in events} == {"credit-gate.ledger.grant"}
    batch = api.call("GET", "/v1/export", params={"format": "cloudevents-batch"}).json()
    assert [e["id"] for e in batch] == [e["id"] for e in events]
    problem(
        api.call("GET", "/v1/export", params={"since": "2026-02-01", "until": "2026-01-01"}),
        422,
        "invalid_input",
    )
    assert api.call("PUT", "/v1/accounts/acme/member-caps/dev", json={"cap": 50}).status_code == 200
    problem(api.call("PUT", "/v1/accounts/nobody/member-caps/dev", json={"cap": 50}), 404, "not_found")
    assert api.call("GET", "/v1/accounts/acme/member-caps").json() == [{"member": "dev", "cap": 50}]
    api.call("DELETE", "/v1/accounts/acme/member-caps/dev")
    assert api.call("GET", "/v1/accounts/acme/member-caps").json() == []


def test_bodies_over_the_limit_of_the_wrong_type_or_malformed_are_refused(settings: RedisSettings) -> None:
    with running_service(settings, body_limit=256) as api:
        problem(
            api.call(
                "POST",
                "/v1/plans",
                data=b"[" + b" " * 300 + b"]",
                headers={"Content-Type": "application/json"},
            ),
            413,
            "payload_too_large",
        )

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds for a chunked body too
            yield b"["
            for _ in range(40):
                yield b"          "
            yield b"]"

        problem(
            api.call("POST", "/v1/plans", data=chunks(), headers={"Content-Type": "application/json"}),
            413,
            "payload_too_large",
        )
        problem(
            api.call("POST", "/v1/plans", data=json.dumps(PLAN), headers={"Content-Type": "text/plain"}),
            415,
            "unsupported_media_type",
        )
        problem(
            api.call("POST", "/v1/plans", data=b"{", headers={"Content-Type": "application/json"}),
            400,
            "malformed_body",
        )
        dup = b'{"amount": 1, "amount": 1000}'
        api.call("POST", "/v1/plans", json=PLAN)
        api.call("PUT", "/v1/accounts/a/subscription", json={"plan": "pro"})
        problem(
            api.call(
                "POST",
                "/v1/accounts/a/grants",
                data=dup,
                headers={"Content-Type": "application/json", "Idempotency-Key": "d"},
            ),
            400,
            "malformed_body",
        )
        nan = b'{"amount": NaN}'
        problem(
            api.call(
                "POST",
                "/v1/accounts/a/grants",
                data=nan,
                headers={"Content-Type": "application/json", "Idempotency-Key": "n"},
            ),
            400,
            "malformed_body",
        )
        assert api.call("GET", "/v1/accounts/a").json()["balance"] == 0


def test_tokens_read_only_read_write_and_none(api: Running) -> None:
    problem(api.call("GET", "/v1/plans", token=None), 401, "unauthenticated")
    bad = api.call("GET", "/v1/plans", token="not-the-token-0123456789")
    problem(bad, 401, "unauthenticated")
    assert "Bearer" in bad.headers["WWW-Authenticate"]
    assert api.call("GET", "/v1/plans", token=READ_TOKEN).status_code == 200
    problem(api.call("POST", "/v1/plans", token=READ_TOKEN, json=PLAN), 403, "forbidden")
    assert api.call("GET", "/v1/plans").json() == []
    assert api.call("GET", "/healthz", token=None).json() == {"status": "ok"}


def test_it_refuses_to_start_open_unless_on_loopback(settings: RedisSettings, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no API token"):
        build(settings, host="0.0.0.0", environ={})
    with pytest.raises(ConfigError, match="at least 16"):
        build(settings, host="0.0.0.0", environ={"CREDIT_GATE_ADMIN_TOKENS": "short"})
    app, warning = build(settings, host="127.0.0.1", environ={})
    assert warning and "open" in warning
    app.state.service.admin.close()
    tokens = tmp_path / "tokens"
    tokens.write_text("# rotated weekly\nfile-token-0123456789abcdef\n")
    app, warning = build(settings, host="0.0.0.0", environ={}, admin_token_files=(tokens,))
    assert warning is None
    app.state.service.admin.close()
    with running_service(settings, environ={}) as open_api:
        assert open_api.call("POST", "/v1/plans", token=None, json=PLAN).status_code == 200


@pytest.mark.server
def test_a_redis_outage_is_a_503_with_retry_after(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    settings = RedisSettings(host="127.0.0.1", port=server.port, connect_timeout=300, read_timeout=300)
    try:
        with running_service(settings) as api:
            subscribed(api)
            server.stop()
            for response in (api.call("GET", "/v1/accounts/acme"), grant(api, "acme", 5, "k")):
                body = problem(response, 503, "store_unavailable")
                assert int(response.headers["Retry-After"]) >= 1
                assert "Idempotency-Key" in str(body["detail"])
            ready = api.call("GET", "/readyz", token=None)
            problem(ready, 503, "store_unavailable")
            assert int(ready.headers["Retry-After"]) >= 1
    finally:
        server.stop()


def test_the_committed_openapi_document_is_the_one_served(api: Running) -> None:
    served = api.call("GET", "/openapi.json", token=None).json()
    committed = json.loads((Path(__file__).parents[2] / "docs" / "openapi.json").read_text())
    assert served == committed, "run `credit-gate serve --print-openapi > docs/openapi.json`"
    assert "/v1/accounts/{account}/grants" in served["paths"]
