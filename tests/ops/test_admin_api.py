"""The operators' Python API, as a billing integration calls it."""

from __future__ import annotations

from typing import Any

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.inputs import format_instant, parse_credits, parse_instant
from creditgate.core.model import Plan, Status, check_plan_name
from creditgate.core.periods import DAY_SECONDS, Period
from creditgate.core.policy import ChargeRequest
from creditgate.errors import ConfigError, Conflict, InvalidDocument, NotFound
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.conftest import Clock

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


@pytest.fixture
def daily(admin: Admin) -> Admin:
    admin.apply_plan(Plan("daily", period=Period.DAY, allowance=10, prepaid=True))
    admin.apply_plan(Plan("weekly", period=Period.WEEK, allowance=10, prepaid=True))
    admin.subscribe("acme", "daily", starts_at=T0)
    return admin


def test_the_view_rolls_the_period_over_as_the_next_charge_would(
    daily: Admin, store: RedisStore, clock: Clock
) -> None:
    store.charge(ChargeRequest("acme", 4, now=T0 + 5))
    assert (daily.view("acme").used, daily.view("acme").period_end) == (4, T0 + DAY_SECONDS)
    clock.now = T0 + DAY_SECONDS + 1
    view = daily.view("acme")
    assert (view.used, view.remaining, view.period_start, view.period_end) == (
        0,
        10,
        T0 + DAY_SECONDS,
        T0 + 2 * DAY_SECONDS,
    )


def test_a_plan_without_period_never_ends(admin: Admin) -> None:
    admin.apply_plan(Plan("once", period=Period.NONE, allowance=5))
    admin.subscribe("acme", "once", starts_at=T0)
    view = admin.view("acme")
    assert (view.period_start, view.period_end, view.to_json()["period"]["end"]) == (T0, 0, None)


def test_changing_to_a_plan_of_the_same_period_keeps_the_allowance_used(
    daily: Admin, store: RedisStore
) -> None:
    daily.apply_plan(Plan("daily-plus", period=Period.DAY, allowance=20))
    store.charge(ChargeRequest("acme", 4, now=T0 + 5))
    assert daily.change_plan("acme", "daily-plus") == "daily"
    assert (store.account_state("acme").used, store.account_state("acme").allowance) == (4, 20)


def test_changing_the_period_length_restarts_the_period(daily: Admin, store: RedisStore) -> None:
    store.charge(ChargeRequest("acme", 4, now=T0 + 5))
    daily.change_plan("acme", "weekly")
    assert store.account_state("acme").used == 0


def test_accounts_lists_every_account_once(daily: Admin) -> None:
    daily.grant("zed", 1)
    assert [v.account for v in daily.accounts()] == ["acme", "zed"]


def test_the_ledger_reads_the_newest_entries(daily: Admin) -> None:
    for i in range(5):
        daily.grant("acme", i + 1)
    assert [e.amount for e in daily.ledger("acme", limit=3)] == [3, 4, 5]


def test_the_ledger_replays_to_the_balance_after_retention_folded_old_entries(
    daily: Admin, store: RedisStore
) -> None:
    small = Admin(store, ledger_retention=100, clock=daily.clock)
    small.grant("acme", 1_000)
    for i in range(300):
        store.charge(ChargeRequest("acme", 1, now=T0 + i, ledger_retention=100))
        if i % 50 == 0:
            small.grant("acme", 3)
    check = small.verify_ledger("acme")
    assert check.ok and check.ledger_base != 0 and check.entries <= 106
    assert check.balance == 1_000 + 6 * 3 - (
        300 - 10
    )  # the first 10 credits each day came from the allowance


def test_import_account_is_idempotent_per_key(admin: Admin, store: RedisStore) -> None:
    admin.apply_plan(Plan("pro"))
    first = admin.import_account("acme", plan="pro", status=Status.TRIALING, balance=40)
    again = admin.import_account("acme", plan="pro", status=Status.TRIALING, balance=40)
    assert (first.grant, again.grant, again.ledger_id) == (1, 0, first.ledger_id)
    assert store.account_state("acme").balance == 40


def test_import_account_refuses_an_unknown_plan_and_writes_nothing(admin: Admin, store: RedisStore) -> None:
    with pytest.raises(NotFound):
        admin.import_account("acme", plan="gold", balance=40)
    assert not store.account_state("acme").exists


def test_adjust_down_an_unknown_account_is_not_found(admin: Admin) -> None:
    with pytest.raises(NotFound):
        admin.adjust_down("ghost", 1)


def test_adjust_down_below_zero_is_a_conflict(daily: Admin) -> None:
    with pytest.raises(Conflict):
        daily.adjust_down("acme", 1)


def test_grant_without_create_refuses_an_unknown_account(admin: Admin, store: RedisStore) -> None:
    with pytest.raises(NotFound):
        admin.grant("typo", 5, create=False)
    assert not store.account_state("typo").exists


def test_connect_refuses_a_key_prefix_that_could_break_the_hash_tags(settings: RedisSettings) -> None:
    with pytest.raises(ConfigError):
        Admin.connect(settings, "a{b}")


@pytest.mark.parametrize("text", ["1.5", "1e3", "true", "", "-1", "1_000", " 0x10", "١٢"])
def test_credits_in_text_are_digits_only(text: str) -> None:
    with pytest.raises(InvalidDocument):
        parse_credits(text, "amount", minimum=1)


@pytest.mark.parametrize("parse", [parse_credits, parse_instant, check_plan_name])
def test_a_value_thousands_of_characters_long_is_refused_and_quoted_short(parse: Any) -> None:
    """Python reads at most 4,300 digits into an int: a longer number must still be a clear refusal, and
    no error message sends a client's 5,000-character field back whole."""
    with pytest.raises(InvalidDocument) as refused:
        parse("9" * 5000)
    assert len(str(refused.value)) < 300 and "(5002 characters)" in str(refused.value)


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("1767225600", T0),
        ("2026-01-01", T0),
        ("2026-01-01T00:00:00Z", T0),
        ("2026-01-01T01:00:00+01:00", T0),
        ("2026-01-01t00:00:00.999z", T0),
        ("2026-01-01 00:00:30Z", T0 + 30),
    ],
)
def test_instants_are_rfc3339_or_unix_seconds(text: str, epoch: int) -> None:
    assert parse_instant(text) == epoch
    assert format_instant(epoch) == "2026-01-01T00:00:00Z" or epoch != T0


@pytest.mark.parametrize("text", ["2026-01-01T00:00:00", "01/02/2026", "2026-13-01", "now", "1.5"])
def test_instants_without_an_offset_or_ambiguous_are_refused(text: str) -> None:
    with pytest.raises(InvalidDocument):
        parse_instant(text)
