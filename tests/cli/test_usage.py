"""`credit-gate usage`: per account, route and UTC day, from the charge script's counters."""

from __future__ import annotations

import csv
import io
import time

import pytest

from creditgate.cli import EXIT_INVALID, EXIT_NOT_FOUND
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import DAY_SECONDS, Period
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.cli_support import Cli

JAN_1 = 1_767_225_600  # 2026-01-01T00:00:00Z


@pytest.fixture
def cli(settings: RedisSettings, admin: Admin, store: RedisStore) -> Cli:
    admin.apply_plan(Plan("pro", period=Period.NONE))
    for account in ("acme", "globex"):
        admin.subscribe(account, "pro", starts_at=JAN_1 - DAY_SECONDS)
        admin.grant(account, 100)
    store.charge(ChargeRequest("acme", 2, now=JAN_1 + 10, route="route:r1"))
    store.charge(ChargeRequest("acme", 3, now=JAN_1 + 20, route="route:r1"))
    store.charge(ChargeRequest("acme", 1, now=JAN_1 + 30, route="service:s1"))
    store.charge(ChargeRequest("acme", 500, now=JAN_1 + 40, route="route:r1"))  # refused: insufficient credit
    store.charge(ChargeRequest("globex", 4, now=JAN_1 + DAY_SECONDS + 5, route="route:r1"))
    return Cli(settings)


RANGE = ("--since", "2026-01-01", "--until", "2026-01-03")


def test_usage_is_reported_per_day_account_and_route(cli: Cli) -> None:
    assert cli.json("usage", *RANGE) == [
        {
            "day": "2026-01-01",
            "account": "acme",
            "route": "route:r1",
            "requests": 2,
            "credits": 5,
            "refused": 1,
            "member": None,
            "refunded": 0,
            "replayed": 0,
            "shadow_allowed": 0,
            "shadow_refused": 0,
        },
        {
            "day": "2026-01-01",
            "account": "acme",
            "route": "service:s1",
            "requests": 1,
            "credits": 1,
            "refused": 0,
            "member": None,
            "refunded": 0,
            "replayed": 0,
            "shadow_allowed": 0,
            "shadow_refused": 0,
        },
        {
            "day": "2026-01-02",
            "account": "globex",
            "route": "route:r1",
            "requests": 1,
            "credits": 4,
            "refused": 0,
            "member": None,
            "refunded": 0,
            "replayed": 0,
            "shadow_allowed": 0,
            "shadow_refused": 0,
        },
    ]


def test_usage_can_be_limited_to_one_account(cli: Cli) -> None:
    rows = cli.json("usage", *RANGE, "--account", "globex")
    assert [(r["day"], r["account"]) for r in rows] == [("2026-01-02", "globex")]


def test_until_is_exclusive(cli: Cli) -> None:
    rows = cli.json("usage", "--since", "2026-01-01", "--until", "2026-01-02")
    assert {r["day"] for r in rows} == {"2026-01-01"}


def test_usage_as_csv(cli: Cli) -> None:
    out = cli.ok("usage", *RANGE, "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0] == {
        "day": "2026-01-01",
        "account": "acme",
        "route": "route:r1",
        "requests": "2",
        "credits": "5",
        "refused": "1",
        "member": "",
        "refunded": "0",
        "replayed": "0",
        "shadow_allowed": "0",
        "shadow_refused": "0",
    }
    assert len(rows) == 3


def test_the_table_comes_with_a_chart_of_credits_per_day(cli: Cli) -> None:
    out = cli.ok("usage", *RANGE).stdout
    assert "service:s1" in out
    chart = out.split("Credits per day", 1)[1]
    lines = [line for line in chart.splitlines() if line.startswith("2026-01-0")]
    assert [line.split()[:2] for line in lines] == [["2026-01-01", "6"], ["2026-01-02", "4"]]
    assert chart.count("█") > 0


def test_usage_defaults_to_the_last_seven_days(cli: Cli, store: RedisStore) -> None:
    now = int(time.time())
    store.charge(ChargeRequest("acme", 1, now=now, route="route:today"))
    store.charge(ChargeRequest("acme", 1, now=now - 8 * DAY_SECONDS, route="route:old"))
    routes = {r["route"] for r in cli.json("usage")}
    assert routes == {"route:today"}


def test_usage_for_an_unknown_account_exits_2(cli: Cli) -> None:
    assert cli.run("usage", "--account", "ghost").exit_code == EXIT_NOT_FOUND


def test_usage_refuses_a_range_longer_than_the_counters_are_kept(cli: Cli) -> None:
    result = cli.run("usage", "--since", "2024-01-01", "--until", "2026-01-01")
    assert result.exit_code == EXIT_INVALID
    assert "usage is kept for 400 days" in result.stderr


def test_usage_with_nothing_to_show_says_so(cli: Cli) -> None:
    assert (
        "No usage from 2025-01-01T00:00:00Z"
        in cli.ok("usage", "--since", "2025-01-01", "--until", "2025-01-05").stdout
    )
