"""The service's side of the dashboard, over real HTTP: the whole API's usage totals, and the page's files
served with a strict policy and no data of their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan, Status
from creditgate.core.periods import DAY_SECONDS, Period
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.service.dashboard import FILES
from creditgate.store.keys import totals_meta
from creditgate.store.store import RedisStore
from tests.service_support import READ_TOKEN, Running, running_service

JAN_1 = 1_767_225_600  # 2026-01-01T00:00:00Z
RANGE = {"since": "2026-01-01", "until": "2026-01-04"}


@pytest.fixture
def api(settings: RedisSettings) -> Iterator[Running]:
    with running_service(settings) as running:
        yield running


@pytest.fixture
def seeded(admin: Admin, store: RedisStore) -> None:
    admin.apply_plan(Plan("pro", period=Period.NONE))
    for account in ("acme", "globex", "initech", "pool"):
        admin.subscribe(account, "pro", starts_at=JAN_1 - DAY_SECONDS)
        admin.grant(account, 100)
    store.charge(ChargeRequest("acme", 2, now=JAN_1 + 10, route="route:search"))
    charge = store.charge(ChargeRequest("acme", 3, now=JAN_1 + 20, route="route:search"))
    store.settle("acme", charge.charge_id, 0, now=JAN_1 + 30, refund=True, window_seconds=DAY_SECONDS)
    refused = ChargeRequest("acme", 500, now=JAN_1 + 40, route="route:export")  # not enough credit
    store.charge(refused)
    store.charge(ChargeRequest("globex", 7, now=JAN_1 + 2 * DAY_SECONDS + 5, route="route:search"))
    store.charge(
        ChargeRequest("pool", 4, now=JAN_1 + 2 * DAY_SECONDS + 6, route="route:export", member="alice")
    )


def test_totals_add_up_every_account_per_day_route_and_account(api: Running, seeded: None) -> None:
    answer = api.call("GET", "/v1/usage/totals", token=READ_TOKEN, params=RANGE)
    assert answer.status_code == 200
    body = answer.json()
    zero = {"replayed": 0, "shadow_allowed": 0, "shadow_refused": 0}
    short = {"refused": 1, "refused_by_reason": {"insufficient_credit": 1}}
    none = {"refused": 0, "refused_by_reason": {}}
    assert body["since"] == "2026-01-01T00:00:00Z"
    assert body["until"] == "2026-01-04T00:00:00Z"
    assert body["total"] == {"requests": 4, "credits": 16, "refunded": 3, **short, **zero}
    assert body["reasons"] == ["insufficient_credit"]
    assert body["days"] == [
        {"day": "2026-01-01", "requests": 2, "credits": 5, "refunded": 3, **short, **zero},
        {"day": "2026-01-02", "requests": 0, "credits": 0, "refunded": 0, **none, **zero},
        {"day": "2026-01-03", "requests": 2, "credits": 11, "refunded": 0, **none, **zero},
    ]
    assert body["routes"] == [
        {"route": "route:export", "requests": 1, "credits": 4, "refunded": 0, **short, **zero},
        {"route": "route:search", "requests": 3, "credits": 12, "refunded": 3, **none, **zero},
    ]
    assert [(a["account"], a["credits"]) for a in body["top_accounts"]] == [
        ("globex", 7),
        ("acme", 5),
        ("pool", 4),
    ]
    assert body["accounts_with_usage"] == 3


def test_a_pool_members_own_row_is_not_counted_twice(api: Running, seeded: None) -> None:
    rows = api.call("GET", "/v1/usage", token=READ_TOKEN, params={**RANGE, "account": "pool"}).json()["rows"]
    assert {r["member"] for r in rows} == {None, "alice"}  # the pool's row and the member's own
    body = api.call("GET", "/v1/usage/totals", token=READ_TOKEN, params=RANGE).json()
    assert next(a for a in body["top_accounts"] if a["account"] == "pool")["credits"] == 4


def test_refusals_are_given_by_reason_adding_up_to_refused(
    api: Running, seeded: None, admin: Admin, store: RedisStore
) -> None:
    admin.set_status("globex", Status.SUSPENDED)
    for second in (50, 60):
        store.charge(ChargeRequest("globex", 1, now=JAN_1 + second, route="route:search"))
    store.charge(ChargeRequest("pool", 1, now=JAN_1 + 70, route="route:search", member="alice"))
    body = api.call("GET", "/v1/usage/totals", token=READ_TOKEN, params=RANGE).json()
    assert body["total"]["refused_by_reason"] == {"insufficient_credit": 1, "subscription_inactive": 2}
    assert body["reasons"] == ["subscription_inactive", "insufficient_credit"]  # most refused first
    for figures in [body["total"], *body["days"], *body["routes"], *body["top_accounts"]]:
        assert sum(figures["refused_by_reason"].values()) == figures["refused"], figures
    day = body["days"][0]
    assert (day["refused"], day["refused_by_reason"]) == (
        3,
        {"insufficient_credit": 1, "subscription_inactive": 2},
    )
    rows = api.call("GET", "/v1/usage", token=READ_TOKEN, params=RANGE).json()["rows"]
    assert {r["route"] for r in rows} == {"route:export", "route:search"}  # a reason is not a route


def test_totals_of_some_accounts_leave_the_others_out(api: Running, seeded: None) -> None:
    body = api.call("GET", "/v1/usage/totals", token=READ_TOKEN, params={**RANGE, "account": "acme"}).json()
    assert body["total"]["credits"] == 5 and body["total"]["refused_by_reason"] == {"insufficient_credit": 1}
    assert [a["account"] for a in body["top_accounts"]] == ["acme"]
    assert body["accounts_with_usage"] == 1
    unknown = api.call("GET", "/v1/usage/totals", token=READ_TOKEN, params={**RANGE, "account": "nobody"})
    assert unknown.status_code == 404


def test_refusals_counted_before_reasons_were_are_unrecorded(
    api: Running, admin: Admin, store: RedisStore
) -> None:
    admin.apply_plan(Plan("pro", period=Period.NONE))
    admin.subscribe("acme", "pro", starts_at=JAN_1 - DAY_SECONDS)
    store.charge(ChargeRequest("acme", 1, now=JAN_1 + 10, route="route:search"))  # refused: no credit
    store.client.hincrby(
        store.keys.account("acme").usage(JAN_1), "route:search|refused", 2
    )  # as counted by an earlier release, which kept no totals: they count from the next day on
    store.client.hset(totals_meta(store.keys.prefix), "from", JAN_1 + DAY_SECONDS)
    body = api.call("GET", "/v1/usage/totals", token=READ_TOKEN, params=RANGE).json()
    assert body["total"]["refused"] == 3
    assert body["total"]["refused_by_reason"] == {"insufficient_credit": 1, "unrecorded": 2}


def test_top_keeps_the_most_charged_accounts(api: Running, seeded: None) -> None:
    body = api.call("GET", "/v1/usage/totals", token=READ_TOKEN, params={**RANGE, "top": 1}).json()
    assert [a["account"] for a in body["top_accounts"]] == ["globex"]
    assert body["accounts_with_usage"] == 3


def test_totals_of_an_empty_store_are_zeros_on_every_day(api: Running) -> None:
    body = api.call("GET", "/v1/usage/totals", token=READ_TOKEN, params=RANGE).json()
    assert [d["day"] for d in body["days"]] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert all(d["requests"] == d["credits"] == 0 for d in body["days"])
    assert (body["routes"], body["top_accounts"], body["accounts_with_usage"]) == ([], [], 0)


def test_totals_need_a_token_and_a_range_that_ends_after_it_starts(api: Running) -> None:
    refused = api.call("GET", "/v1/usage/totals", token=None)
    assert (refused.status_code, refused.json()["code"]) == (401, "unauthenticated")
    wrong = api.call("GET", "/v1/usage/totals", token="not-a-token-0123456789")
    assert (wrong.status_code, wrong.json()["code"]) == (401, "unauthenticated")
    backwards = api.call("GET", "/v1/usage/totals", params={"since": "2026-01-04", "until": "2026-01-01"})
    assert (backwards.status_code, backwards.json()["field"]) == (422, "until")
    too_long = api.call("GET", "/v1/usage/totals", params={"since": "2020-01-01", "until": "2026-01-01"})
    assert too_long.status_code == 422


def test_the_page_is_served_without_a_token_and_holds_no_data(api: Running, seeded: None) -> None:
    page = api.call("GET", "/dashboard/", token=None)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "acme" not in page.text and "Authorization: Bearer" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-content-type-options"] == "nosniff"


def test_the_page_links_only_its_own_files(api: Running) -> None:
    redirect = api.call("GET", "/dashboard", token=None, allow_redirects=False)
    assert (redirect.status_code, redirect.headers["location"]) == (308, "dashboard/")
    for name, media_type in FILES.items():
        answer = api.call("GET", f"/dashboard/{name}", token=None)
        assert (answer.status_code, answer.headers["content-type"]) == (200, media_type), name
    page = api.call("GET", "/dashboard/", token=None).text
    assert "http://" not in page and "https://" not in page
    chart = api.call("GET", "/dashboard/chart.umd.min.js", token=None).text
    assert chart.startswith("/*!\n * Chart.js v4.") and "sourceMappingURL" not in chart
    licence = api.call("GET", "/dashboard/LICENSE.chart.js.txt", token=None).text
    assert "MIT License" in licence and "Chart.js Contributors" in licence


def test_a_file_the_browser_holds_is_not_sent_again(api: Running) -> None:
    first = api.call("GET", "/dashboard/chart.umd.min.js", token=None)
    again = api.call(
        "GET", "/dashboard/chart.umd.min.js", token=None, headers={"If-None-Match": first.headers["etag"]}
    )
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", first.headers["etag"])
    other = api.call(
        "GET", "/dashboard/dashboard.js", token=None, headers={"If-None-Match": first.headers["etag"]}
    )
    assert other.status_code == 200 and other.headers["etag"] != first.headers["etag"]


@pytest.mark.parametrize("name", ["nothing.js", "..%2Fapp.py", "vendor%2Fchart.umd.min.js", "%2E%2E"])
def test_no_other_file_is_reachable(api: Running, name: str) -> None:
    answer = api.call("GET", f"/dashboard/{name}", token=None)
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"


def test_the_page_is_not_in_the_api_document(api: Running) -> None:
    paths = api.call("GET", "/openapi.json", token=None).json()["paths"]
    assert "/v1/usage/totals" in paths
    assert not [p for p in paths if p.startswith("/dashboard")]


def test_usage_without_accounts_is_read_a_page_of_accounts_at_a_time(api: Running, seeded: None) -> None:
    seen: list[str] = []
    pages = 0
    params: dict[str, str | int] = {**RANGE, "limit": 1}
    while True:
        body = api.call("GET", "/v1/usage", token=READ_TOKEN, params=params).json()
        pages += 1
        seen += sorted({row["account"] for row in body["rows"]})
        if body["next"] is None:
            break
        params = {**RANGE, "limit": 1, "after": body["next"]}
    assert sorted(seen) == ["acme", "globex", "pool"]  # initech has no usage: no rows
    assert pages >= 2
    whole = api.call("GET", "/v1/usage", token=READ_TOKEN, params={**RANGE, "limit": 500}).json()
    assert whole["next"] is None
    assert {row["account"] for row in whole["rows"]} == {"acme", "globex", "pool"}


def test_usage_refuses_a_cursor_it_did_not_give_and_too_many_accounts(api: Running) -> None:
    bad = api.call("GET", "/v1/usage", token=READ_TOKEN, params={**RANGE, "after": "x' OR 1"})
    assert bad.status_code == 422
    names = [("account", f"a{i}") for i in range(101)]
    for path in ("/v1/usage", "/v1/usage/totals"):
        many = api.call("GET", path, token=READ_TOKEN, params=[*RANGE.items(), *names])
        assert many.status_code in (400, 422), path


def test_top_accounts_say_whether_the_ranking_is_exact(api: Running, seeded: None) -> None:
    body = api.call("GET", "/v1/usage/totals", token=READ_TOKEN, params={**RANGE, "top": 2}).json()
    assert [a["account"] for a in body["top_accounts"]] == ["globex", "acme"]
    assert body["top_accounts_exact"] is True
    assert api.call("GET", "/v1/usage/totals", token=READ_TOKEN, params={"top": 101}).status_code == 422
