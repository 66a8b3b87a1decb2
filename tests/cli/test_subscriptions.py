"""`credit-gate subscribe`, `change-plan`, `set-status`, `subscription`, `accounts`, `balance`."""

from __future__ import annotations

import time

import pytest

from creditgate.cli import EXIT_INVALID, EXIT_NOT_FOUND
from creditgate.core.config import RedisSettings
from creditgate.core.inputs import format_instant
from creditgate.core.model import Plan
from creditgate.core.periods import Period, window_at
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.cli_support import Cli

JAN_1 = 1_767_225_600  # 2026-01-01T00:00:00Z


@pytest.fixture
def cli(settings: RedisSettings, admin: Admin) -> Cli:
    admin.apply_plan(Plan("free", period=Period.MONTH, allowance=100, prepaid=False))
    admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=1000, prepaid=True))
    return Cli(settings)


def test_subscribe_with_rfc3339_and_unix_times_shows_them_in_utc(cli: Cli) -> None:
    shown = cli.json(
        "subscribe", "acme", "pro", "--start", "2026-01-01T01:00:00+01:00", "--expires", str(JAN_1 + 86_400)
    )
    assert shown == {
        "account": "acme",
        "plan": "pro",
        "status": "active",
        "starts_at": "2026-01-01T00:00:00Z",
        "anchor": "2026-01-01T00:00:00Z",
        "expires_at": "2026-01-02T00:00:00Z",
    }


def test_subscribe_takes_a_status_and_a_period_anchor(cli: Cli, store: RedisStore) -> None:
    cli.ok(
        "subscribe", "acme", "pro", "--status", "trialing", "--start", "2026-01-01", "--anchor", "2026-01-15"
    )
    state = store.account_state("acme")
    assert (state.status, state.starts_at, state.anchor) == ("trialing", JAN_1, JAN_1 + 14 * 86_400)


def test_subscribe_to_an_unknown_plan_exits_2(cli: Cli, store: RedisStore) -> None:
    result = cli.run("subscribe", "acme", "gold")
    assert result.exit_code == EXIT_NOT_FOUND
    assert "no plan named 'gold'" in result.stderr
    assert not store.account_state("acme").exists


def test_subscribe_refuses_an_expiry_before_the_start(cli: Cli) -> None:
    result = cli.run("subscribe", "acme", "pro", "--start", "2026-02-01", "--expires", "2026-01-01")
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == "credit-gate: error: expires_at: must be after starts_at\n"


def test_subscribe_refuses_a_time_without_an_offset(cli: Cli) -> None:
    result = cli.run("subscribe", "acme", "pro", "--start", "2026-01-01T10:00:00")
    assert result.exit_code == EXIT_INVALID
    assert "Invalid value for '--start': must be an RFC 3339 time with an offset" in result.stderr


def test_subscribe_refuses_an_unknown_status(cli: Cli) -> None:
    result = cli.run("subscribe", "acme", "pro", "--status", "paused")
    assert result.exit_code == EXIT_INVALID
    assert "'paused' is not one of" in result.stderr


def test_change_plan_keeps_status_times_and_balance(cli: Cli, admin: Admin, store: RedisStore) -> None:
    cli.ok("subscribe", "acme", "free", "--status", "trialing", "--start", str(JAN_1))
    admin.grant("acme", 50)
    changed = cli.json("change-plan", "acme", "pro")
    assert changed["previous_plan"] == "free"
    assert (changed["plan"], changed["status"], changed["starts_at"]) == (
        "pro",
        "trialing",
        "2026-01-01T00:00:00Z",
    )
    state = store.account_state("acme")
    assert (state.plan, state.allowance, state.prepaid, state.balance) == ("pro", 1000, True, 50)
    assert admin.plan_subscribers("free") == [] and admin.plan_subscribers("pro") == ["acme"]


def test_change_plan_of_an_account_without_subscription_exits_2(cli: Cli) -> None:
    result = cli.run("change-plan", "ghost", "pro")
    assert result.exit_code == EXIT_NOT_FOUND
    assert "account 'ghost' has no subscription; subscribe it to a plan first" in result.stderr


def test_set_status_reports_the_previous_status(cli: Cli, store: RedisStore) -> None:
    cli.ok("subscribe", "acme", "pro")
    assert cli.json("set-status", "acme", "past_due") == {
        "account": "acme",
        "status": "past_due",
        "previous_status": "active",
    }
    assert "status past_due -> suspended" in cli.ok("set-status", "acme", "suspended").stdout
    assert store.account_state("acme").status == "suspended"


def test_set_status_of_an_unknown_account_exits_2(cli: Cli) -> None:
    assert cli.run("set-status", "ghost", "canceled").exit_code == EXIT_NOT_FOUND


def test_subscription_shows_plan_status_and_times(cli: Cli) -> None:
    cli.ok("subscribe", "acme", "pro", "--start", str(JAN_1))
    table = cli.ok("subscription", "acme").stdout
    assert "pro" in table and "active" in table and "2026-01-01T00:00:00Z" in table and "never" in table
    assert cli.json("subscription", "acme")["plan"] == "pro"


def test_subscription_of_an_account_with_only_credit_exits_2(cli: Cli, admin: Admin) -> None:
    admin.grant("acme", 5)
    result = cli.run("subscription", "acme")
    assert result.exit_code == EXIT_NOT_FOUND
    assert "has no subscription" in result.stderr


def test_accounts_lists_plan_status_and_balance(cli: Cli, admin: Admin) -> None:
    cli.ok("subscribe", "acme", "pro")
    cli.ok("subscribe", "globex", "free")
    admin.grant("acme", 30)
    listed = {a["account"]: a for a in cli.json("accounts")}
    assert listed["acme"]["balance"] == 30 and listed["acme"]["subscription"]["plan"] == "pro"
    assert listed["globex"]["period"]["remaining"] == 100
    table = cli.ok("accounts").stdout
    assert "acme" in table and "globex" in table and "1000/1000" in table


def test_balance_shows_the_current_period_even_before_the_first_charge_rolls_it(
    cli: Cli, admin: Admin, store: RedisStore
) -> None:
    cli.ok("subscribe", "acme", "pro", "--start", str(JAN_1))
    admin.grant("acme", 7)
    store.charge(ChargeRequest("acme", 3, now=JAN_1 + 10))
    shown = cli.json("balance", "acme")
    # The charge was in January's period; the one shown is the period the CLI's clock is in.
    current = window_at(Period.MONTH, JAN_1, int(time.time()))
    assert current.start > JAN_1
    assert shown["balance"] == 7
    assert shown["period"]["used"] == 0 and shown["period"]["remaining"] == 1000
    assert shown["period"]["end"] == format_instant(current.end)
    assert shown["subscription"]["plan"] == "pro"


def test_balance_shows_allowance_used_in_the_current_period(
    cli: Cli, admin: Admin, store: RedisStore
) -> None:
    now = int(time.time())
    cli.ok("subscribe", "acme", "pro", "--start", str(now - 60))
    store.charge(ChargeRequest("acme", 4, now=now))
    shown = cli.json("balance", "acme")
    assert (shown["period"]["used"], shown["period"]["remaining"]) == (4, 996)
    table = cli.ok("balance", "acme").stdout
    assert "allowance left" in table and "996" in table and "period ends" in table


def test_balance_of_an_unknown_account_exits_2(cli: Cli) -> None:
    result = cli.run("balance", "nobody")
    assert result.exit_code == EXIT_NOT_FOUND
    assert (
        result.stderr
        == "credit-gate: error: no account named 'nobody'; `credit-gate accounts` lists the accounts\n"
    )
