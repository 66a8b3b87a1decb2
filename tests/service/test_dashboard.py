"""The operators' dashboard in a real browser: Debian's Chromium, driven by Playwright, against the running
service over HTTP and a real Redis seeded with a month of usage made by the charge and settle scripts.

What the page shows is compared with what the scripts answered while seeding (requests, credits,
refusals and refunds per account, route and UTC day), not with the API's own answers. Screenshots at
1280 and 390 px wide are written to test-output/dashboard/ (or $CREDIT_GATE_TEST_OUTPUT/dashboard/).
"""

from __future__ import annotations

import datetime as dt
import os
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Request, sync_playwright

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan, Status
from creditgate.core.periods import DAY_SECONDS, Period
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.redis_servers import RedisServer, free_port
from tests.service_support import READ_TOKEN, Running, running_service

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
OUTPUT = Path(os.environ.get("CREDIT_GATE_TEST_OUTPUT") or ROOT / "test-output") / "dashboard"
ROUTES = ("route:search", "route:export", "service:billing")
FIELDS = ("requests", "credits", "refused", "refunded")
DAYS = 30


@dataclass
class Month:
    """What the scripts answered while the month was seeded: the figures the page must show."""

    days: list[str]
    usage: dict[tuple[str, str, str], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    balances: dict[str, int] = field(default_factory=dict)
    subscribers: dict[str, list[str]] = field(default_factory=dict)

    def per_day(self, name: str, account: str | None = None) -> list[int]:
        return [
            sum(c[name] for (a, d, _), c in self.usage.items() if d == day and account in (None, a))
            for day in self.days
        ]

    def per_route_day(self, account: str, name: str) -> dict[str, list[int]]:
        routes = sorted({r for (a, _, r) in self.usage if a == account})
        return {r: [self.usage[(account, d, r)][name] for d in self.days] for r in routes}

    def reasons(self, account: str | None = None) -> dict[str, list[int]]:
        """Refusals per day by reason, the reasons most refused first (the page's order)."""
        names = {n for (a, _, _), c in self.usage.items() if account in (None, a) for n in c if ":" in n}
        by_reason = {n.partition(":")[2]: self.per_day(n, account) for n in names}
        return dict(sorted(by_reason.items(), key=lambda item: (-sum(item[1]), item[0])))

    def per_account(self, name: str) -> Counter[str]:
        out: Counter[str] = Counter()
        for (a, _, _), c in self.usage.items():
            out[a] += c[name]
        return out


def seed_month(admin: Admin, store: RedisStore) -> Month:
    """Thirty UTC days ending yesterday: five accounts that use three routes, with charges paid from an
    allowance or a balance, refusals (an inactive subscription, a spent balance, a daily quota) and
    refunds; one account and one plan that are never used."""
    today = dt.datetime.now(dt.timezone.utc).date()
    first = dt.datetime.combine(today - dt.timedelta(days=DAYS), dt.time(), dt.timezone.utc)
    start = int(first.timestamp())
    month = Month([(first.date() + dt.timedelta(days=i)).isoformat() for i in range(DAYS)])
    admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=2000, prepaid=True, title="Pro"))
    admin.apply_plan(Plan("metered", period=Period.NONE, allowance=0, prepaid=True))
    admin.apply_plan(Plan("daily", period=Period.DAY, allowance=20, prepaid=False))
    admin.apply_plan(Plan("enterprise", period=Period.MONTH, allowance=1_000_000, prepaid=True))
    accounts = {
        "acme": ("pro", Status.ACTIVE, 40_000),
        "globex": ("pro", Status.ACTIVE, 15_000),
        "initech": ("metered", Status.ACTIVE, 600),
        "umbrella": ("daily", Status.ACTIVE, 0),
        "hooli": ("pro", Status.SUSPENDED, 500),
        "dormant": ("metered", Status.ACTIVE, 1_000),
    }
    for name, (plan, status, balance) in accounts.items():
        admin.subscribe(name, plan, status=status, starts_at=start - DAY_SECONDS)
        if balance:
            admin.grant(name, balance, note="opening balance", idempotency_key=f"open:{name}")
    rng = random.Random(20260101)
    for index, day in enumerate(month.days):
        for account in ("acme", "globex", "initech", "umbrella", "hooli"):
            calls = sorted(
                (rng.randrange(0, DAY_SECONDS - 600), rng.choice(ROUTES), rng.choice((1, 2, 5, 10)))
                for _ in range(rng.randint(0, 9 if account == "acme" else 5))
            )
            for second, route, cost in calls:
                now = start + index * DAY_SECONDS + second
                result = store.charge(ChargeRequest(account, cost, now=now, route=route))
                counts = month.usage[(account, day, route)]
                if not result.allowed:
                    assert result.reason is not None
                    counts["refused"] += 1
                    counts[f"refused:{result.reason.value}"] += 1
                    continue
                counts["requests"] += 1
                counts["credits"] += cost
                if result.from_balance and rng.random() < 0.15:
                    back = store.settle(
                        account, result.charge_id, 0, now=now + 30, refund=True, window_seconds=DAY_SECONDS
                    )
                    assert back.outcome == "applied"
                    counts["refunded"] += back.given_back
    month.balances = {name: store.account_state(name).balance for name in accounts}
    month.subscribers = {p.name: admin.plan_subscribers(p.name) for p in admin.plans()}
    assert sum(month.per_day("refused")) > 20 and sum(month.per_day("refunded")) > 0
    assert len(month.reasons()) >= 2, month.reasons()
    return month


@dataclass
class World:
    api: Running
    month: Month
    store: RedisStore
    empty: Running


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = RedisServer(tmp_path_factory.mktemp("dashboard-redis")).start()
    settings = RedisSettings(host="127.0.0.1", port=server.port, connect_timeout=1000, read_timeout=1000)
    empty_settings = RedisSettings(
        host="127.0.0.1", port=server.port, database=1, connect_timeout=1000, read_timeout=1000
    )
    store = RedisStore.from_settings(settings)
    try:
        month = seed_month(Admin(store), store)
        with running_service(settings) as api, running_service(empty_settings) as empty:
            yield World(api, month, store, empty)
    finally:
        store.close()
        server.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield browser
    browser.close()


@dataclass
class Watched:
    page: Page
    errors: list[str]
    requests: list[Request]


def open_page(browser: Browser, width: int, height: int = 900) -> Watched:
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
    page = context.new_page()
    watched = Watched(page, [], [])

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.errors.append(f"page error: {error}"))
    page.on("request", lambda request: watched.requests.append(request))
    return watched


@pytest.fixture
def wide(browser: Browser) -> Iterator[Watched]:
    watched = open_page(browser, 1280)
    yield watched
    watched.page.context.close()


@pytest.fixture
def phone(browser: Browser) -> Iterator[Watched]:
    watched = open_page(browser, 390, 844)
    yield watched
    watched.page.context.close()


def sign_in(page: Page, url: str, token: str = READ_TOKEN) -> None:
    page.goto(url + "/dashboard/")
    page.wait_for_selector("body[data-ready='signed-out']")
    page.fill("#token", token)
    page.click("#sign-in-button")
    page.wait_for_selector("body[data-ready='true']")
    assert page.is_hidden("#problem"), page.inner_text("#problem")


def settled(page: Page) -> None:
    for section in ("overview", "account", "ledger"):
        page.wait_for_selector(f"#{section}:not([aria-busy='true'])")
    assert page.is_hidden("#problem"), page.inner_text("#problem")


def show_month(page: Page, month: Month) -> None:
    page.fill("#range-since", month.days[0])
    page.fill("#range-until", month.days[-1])
    page.click("#range button[type='submit']")
    settled(page)


def chart(page: Page, canvas: str) -> dict[str, Any]:
    data: dict[str, Any] = page.evaluate(
        """(id) => {
            const c = Chart.getChart(document.getElementById(id));
            const datasets = c.data.datasets.map(d => ({label: d.label, data: d.data}));
            return {labels: c.data.labels, datasets};
        }""",
        canvas,
    )
    return data


def table(page: Page, selector: str) -> list[list[str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        f"{selector} tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    return rows


def figure(text: str) -> int:
    return int(text.replace(",", ""))


def card(page: Page, section: str, key: str) -> str:
    return page.inner_text(f"#{section} [data-card='{key}'] dd")


def screenshot(page: Page, name: str) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def test_the_whole_api_shows_the_seeded_month_per_day(world: World, wide: Watched) -> None:
    page, month = wide.page, world.month
    sign_in(page, world.api.url)
    show_month(page, month)
    credits = chart(page, "chart-api-credits")
    assert credits["labels"] == month.days
    assert credits["datasets"][0]["data"] == month.per_day("credits")
    refused = chart(page, "chart-api-refused")
    assert refused["labels"] == month.days
    assert refused["datasets"][0]["data"] == month.per_day("refused")
    reasons = chart(page, "chart-api-reasons")
    assert reasons["labels"] == month.days
    assert {d["label"]: d["data"] for d in reasons["datasets"]} == month.reasons()
    assert [d["label"] for d in reasons["datasets"]] == list(month.reasons())  # most refused first
    assert {"subscription_inactive", "quota_exhausted"} <= set(month.reasons())
    for key in FIELDS:
        assert figure(card(page, "overview", key)) == sum(month.per_day(key)), key
    assert page.inner_text("#overview-range") == f"{month.days[0]} to {month.days[-1]} (UTC)"
    assert page.is_hidden("#overview-empty")


def test_the_top_accounts_and_the_routes_carry_the_seeded_totals(world: World, wide: Watched) -> None:
    page, month = wide.page, world.month
    sign_in(page, world.api.url)
    show_month(page, month)
    charged, refused = month.per_account("credits"), month.per_account("refused")
    expected = sorted((a for a in charged if charged[a] or refused[a]), key=lambda a: (-charged[a], a))
    top = table(page, "#top-accounts")
    assert [r[0] for r in top] == expected
    assert [figure(r[1]) for r in top] == [charged[a] for a in expected]
    assert [figure(r[3]) for r in top] == [refused[a] for a in expected]
    by_route: dict[str, Counter[str]] = defaultdict(Counter)
    for (_, _, route), counts in month.usage.items():
        by_route[route].update(counts)
    routes = {r[0]: (figure(r[1]), figure(r[2]), figure(r[3])) for r in table(page, "#route-totals")}
    assert routes == {r: (c["refused"], c["requests"], c["credits"]) for r, c in by_route.items()}


def test_the_accounts_show_balance_plan_status_and_allowance(world: World, wide: Watched) -> None:
    page, month = wide.page, world.month
    sign_in(page, world.api.url)
    rows = {r[0]: r for r in table(page, "#accounts-table")}
    assert sorted(rows) == sorted(month.balances)
    for name, balance in month.balances.items():
        assert figure(rows[name][3]) == balance, name
    assert rows["hooli"][1:3] == ["pro", "suspended"]
    assert rows["umbrella"][1:3] == ["daily", "active"]
    assert rows["umbrella"][5] == "20 / day"
    assert rows["acme"][5] == "2,000 / month"
    assert rows["acme"][6].endswith(":00:00") and rows["dormant"][6] == "—"  # a 'none' period never ends
    assert page.inner_text("#accounts-count") == "(6)"


def test_one_account_is_charted_per_day_and_route(world: World, wide: Watched) -> None:
    page, month = wide.page, world.month
    sign_in(page, world.api.url)
    show_month(page, month)
    for account in ("acme", "umbrella"):
        page.select_option("#account-select", account)
        page.wait_for_function(
            "(a) => document.querySelector('#account-cards [data-card=balance] dd') &&"
            " document.getElementById('ledger-account').textContent === 'of ' + a",
            arg=account,
        )
        settled(page)
        for name in FIELDS:
            drawn = chart(page, f"chart-account-{name}")
            assert drawn["labels"] == month.days
            assert {d["label"]: d["data"] for d in drawn["datasets"]} == month.per_route_day(account, name)
            total = sum(month.per_day(name, account))
            assert figure(card(page, "account", name)) == total, (account, name)
            none = page.locator(f"figure:has(#chart-account-{name}) .none")
            assert none.is_visible() == (total == 0), (account, name)  # "none in this range"
        assert figure(card(page, "account", "balance")) == month.balances[account]
        reasons = chart(page, "chart-account-reasons")
        assert reasons["labels"] == month.days
        expected = month.reasons(account) or {"Refused": [0] * DAYS}  # none: one empty series
        assert {d["label"]: d["data"] for d in reasons["datasets"]} == expected
        assert page.locator("figure:has(#chart-account-reasons) .none").is_visible() == (
            expected == {"Refused": [0] * DAYS}
        )
    assert sum(month.per_day("refused", "umbrella")) > 0  # the daily quota was reached
    assert list(month.reasons("umbrella")) == ["quota_exhausted"]


def test_plans_list_their_subscribers(world: World, wide: Watched) -> None:
    page, month = wide.page, world.month
    sign_in(page, world.api.url)
    rows = {r[0]: r for r in table(page, "#plans-table")}
    assert sorted(rows) == ["daily", "enterprise", "metered", "pro (Pro)"]
    for plan, accounts in month.subscribers.items():
        row = rows["pro (Pro)" if plan == "pro" else plan]
        assert figure(row[4]) == len(accounts)
        assert row[5] == (", ".join(accounts) if accounts else "none")
    assert rows["daily"][1:4] == ["day", "20", "no"]


def test_the_ledger_pages_through_every_entry_newest_first(world: World, wide: Watched) -> None:
    page = wide.page
    sign_in(page, world.api.url)
    page.select_option("#account-select", "acme")
    page.wait_for_function("() => document.getElementById('ledger-account').textContent === 'of acme'")
    settled(page)
    page.select_option("#ledger-limit", "100")
    page.click("#ledger-filter button[type='submit']")
    settled(page)
    everything = list(reversed(world.store.ledger_tail("acme", 100_000, "-", "+")))
    assert len(everything) > 150
    seen: list[str] = []
    while True:
        rows = table(page, "#ledger-table")
        assert 0 < len(rows) <= 100
        seen += [r[7] for r in rows]
        assert page.inner_text("#ledger-page") == f"Page {len(seen) // 100 + (len(seen) % 100 > 0)}"
        if page.is_disabled("#ledger-next"):
            break
        page.click("#ledger-next")
        settled(page)
    assert seen == [e.id for e in everything]
    first = everything[0]
    assert table(page, "#ledger-table")[-1][1] == "grant"  # the opening balance, last of all
    page.click("#ledger-first")
    settled(page)
    top = table(page, "#ledger-table")[0]
    assert top[7] == first.id
    assert (top[1], figure(top[3]), figure(top[4])) == (
        first.fields["kind"],
        int(first.fields["amount"]),
        int(first.fields["balance"]),
    )
    assert top[2] == (f"{int(first.fields['cost']):,}" if "cost" in first.fields else "")
    assert top[0] == dt.datetime.fromtimestamp(int(first.fields["at"]), dt.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S"
    )


def test_the_ledger_filters_by_recorded_day_and_order(world: World, wide: Watched) -> None:
    page = wide.page
    sign_in(page, world.api.url)
    page.select_option("#account-select", "initech")
    page.wait_for_function("() => document.getElementById('ledger-account').textContent === 'of initech'")
    settled(page)
    page.select_option("#ledger-order", "asc")
    page.select_option("#ledger-limit", "10")
    page.click("#ledger-filter button[type='submit']")
    settled(page)
    rows = table(page, "#ledger-table")
    assert len(rows) == 10 and rows[0][1] == "grant" and rows[0][6] == "opening balance"
    tomorrow = (dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=1)).isoformat()
    page.fill("#ledger-since", tomorrow)
    page.click("#ledger-filter button[type='submit']")
    settled(page)
    assert page.is_visible("#ledger-empty") and page.is_hidden("#ledger-table")
    assert page.is_disabled("#ledger-next")


def test_the_page_loads_without_console_errors_and_talks_only_to_the_service(
    world: World, wide: Watched
) -> None:
    page = wide.page
    sign_in(page, world.api.url)
    show_month(page, world.month)
    page.select_option("#account-select", "globex")
    page.wait_for_function("() => document.getElementById('ledger-account').textContent === 'of globex'")
    settled(page)
    page.click("#ledger-next")
    settled(page)
    assert wide.errors == []
    assert {r.url.split("/")[2] for r in wide.requests} == {world.api.url.split("/")[2]}
    api_calls = [r for r in wide.requests if "/v1/" in r.url]
    assert api_calls and all(r.headers.get("authorization") == f"Bearer {READ_TOKEN}" for r in api_calls)
    assert all(READ_TOKEN not in r.url for r in wide.requests)
    path = screenshot(page, "dashboard-1280.png")
    assert path.exists()


def test_a_phone_sees_every_section_in_one_column(world: World, phone: Watched) -> None:
    page = phone.page
    sign_in(page, world.api.url)
    show_month(page, world.month)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for canvas in ("chart-api-credits", "chart-account-credits"):
        box = page.locator(f"#{canvas}").bounding_box()
        assert box is not None and 300 <= box["width"] <= 390 and box["height"] >= 200
    assert chart(page, "chart-api-credits")["datasets"][0]["data"] == world.month.per_day("credits")
    assert phone.errors == []
    screenshot(page, "dashboard-390.png")


def test_a_wrong_token_is_refused_and_shows_nothing(world: World, wide: Watched) -> None:
    page = wide.page
    page.goto(world.api.url + "/dashboard/")
    page.wait_for_selector("body[data-ready='signed-out']")
    assert page.is_hidden("#dashboard")
    page.fill("#token", "not-the-token-0123456789")
    page.click("#sign-in-button")
    page.wait_for_selector("body[data-ready='refused']")
    assert page.inner_text("#sign-in-error") == "The token was refused."
    assert page.is_hidden("#dashboard")
    assert page.evaluate("sessionStorage.length") == 0
    assert "acme" not in page.content()
    calls = [r for r in wide.requests if "/v1/" in r.url]
    assert [r.response().status for r in calls if r.response()] == [401]  # type: ignore[union-attr]
    assert len(wide.errors) == 1 and "401" in wide.errors[0]  # the browser's own note of the refusal
    screenshot(page, "dashboard-refused-1280.png")


def test_the_token_stays_in_the_tab_until_signing_out(world: World, wide: Watched) -> None:
    page = wide.page
    sign_in(page, world.api.url)
    assert READ_TOKEN not in page.url
    assert page.evaluate("sessionStorage.getItem('credit-gate.token')") == READ_TOKEN
    assert page.evaluate("document.cookie") == "" and page.evaluate("localStorage.length") == 0
    page.reload()
    page.wait_for_selector("body[data-ready='true']")  # still signed in, without asking again
    assert page.is_visible("#dashboard")
    page.click("#sign-out")
    page.wait_for_selector("body[data-ready='signed-out']")
    assert page.evaluate("sessionStorage.length") == 0 and page.is_hidden("#dashboard")


def test_a_token_revoked_while_open_signs_the_page_out(world: World, wide: Watched) -> None:
    page = wide.page
    sign_in(page, world.api.url)
    page.evaluate("sessionStorage.setItem('credit-gate.token', 'revoked-token-0123456789')")
    page.reload()
    page.wait_for_selector("body[data-ready='refused']")
    assert page.is_hidden("#dashboard") and page.is_visible("#sign-in-error")


def test_an_empty_store_shows_empty_states(world: World, wide: Watched) -> None:
    page = wide.page
    sign_in(page, world.empty.url)
    settled(page)
    for empty in ("#accounts-empty", "#overview-empty", "#plans-empty", "#account-none", "#ledger-empty"):
        assert page.is_visible(empty), empty
    assert page.inner_text("#accounts-empty") == "No accounts yet."
    assert table(page, "#top-accounts") == [["No account used the API in this range."]]
    assert page.is_hidden("#account-select")
    assert chart(page, "chart-api-credits")["datasets"][0]["data"] == [0] * 30
    assert chart(page, "chart-api-reasons")["datasets"][0]["data"] == [0] * 30
    assert page.locator("figure:has(#chart-api-reasons) .none").is_visible()  # "none in this range"
    assert wide.errors == []
    screenshot(page, "dashboard-empty-1280.png")


def test_each_section_says_it_is_loading_until_its_answer_comes(world: World, wide: Watched) -> None:
    page = wide.page
    held: list[Any] = []
    overview = lambda url: "/v1/usage/totals" in url and "account=" not in url  # noqa: E731
    page.route(overview, lambda route: held.append(route))
    page.goto(world.api.url + "/dashboard/")
    page.wait_for_selector("body[data-ready='signed-out']")
    page.fill("#token", READ_TOKEN)
    page.click("#sign-in-button")
    page.wait_for_function("() => document.getElementById('overview').getAttribute('aria-busy') === 'true'")
    page.wait_for_selector("#plans:not([aria-busy='true'])")  # the other sections came in
    assert page.is_visible("[data-loading='overview']") and page.is_hidden("#overview-body")
    assert page.inner_text("[data-loading='overview']") == "Loading…"
    for _ in range(100):  # the held call reaches the handler while Playwright waits on the page
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    held[0].continue_()
    page.wait_for_selector("body[data-ready='true']")
    assert page.is_hidden("[data-loading='overview']") and page.is_visible("#overview-body")


def test_a_redis_that_does_not_answer_is_said_so_not_shown_as_empty(browser: Browser) -> None:
    nowhere = RedisSettings(host="127.0.0.1", port=free_port(), connect_timeout=200, read_timeout=200)
    with running_service(nowhere) as api:
        watched = open_page(browser, 1280)
        try:
            page = watched.page
            page.goto(api.url + "/dashboard/")
            page.wait_for_selector("body[data-ready='signed-out']")
            page.fill("#token", READ_TOKEN)
            page.click("#sign-in-button")
            page.wait_for_selector("body[data-ready='unreachable']")
            message = page.inner_text("#sign-in-error")
            assert message.startswith("Could not reach the API: accounts: 503 "), message
            assert page.is_hidden("#dashboard")
        finally:
            watched.page.context.close()
