"""`credit-gate grant`, `adjust-down`, `ledger` and `verify`."""

from __future__ import annotations

import pytest

from creditgate.cli import EXIT_CONFLICT, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_PROBLEMS
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import PAYMENT_KEYS, Admin
from creditgate.store.store import RedisStore
from tests.cli_support import Cli


@pytest.fixture
def cli(settings: RedisSettings, admin: Admin) -> Cli:
    admin.apply_plan(Plan("pro"))
    admin.subscribe("acme", "pro")
    return Cli(settings)


def test_grant_tops_up_and_writes_the_ledger(cli: Cli, store: RedisStore) -> None:
    granted = cli.json("grant", "acme", "500", "--note", "invoice 1042", "--key", "in_1042")
    assert granted["applied"] is True and granted["balance"] == 500
    (entry,) = list(store.ledger("acme"))
    assert entry.id == granted["ledger_id"]
    assert entry.fields["kind"] == "grant" and entry.fields["note"] == "invoice 1042"
    assert entry.fields["key"] == "in_1042"


def test_a_grant_sent_again_with_its_key_counts_once(cli: Cli, store: RedisStore) -> None:
    first = cli.json("grant", "acme", "500", "--key", "in_1042")
    again = cli.run("grant", "acme", "500", "--key", "in_1042")
    assert again.exit_code == 0
    assert f"Key 'in_1042' was already applied (ledger {first['ledger_id']}); nothing granted" in again.stdout
    assert store.account_state("acme").balance == 500


@pytest.mark.parametrize("amount", ["1.5", "1e3", "true", "-5", "0", "1_000", "10000000000000000"])
def test_grant_refuses_an_amount_that_is_not_a_positive_whole_number(
    cli: Cli, store: RedisStore, amount: str
) -> None:
    result = (
        cli.run("grant", "acme", "--", amount) if amount.startswith("-") else cli.run("grant", "acme", amount)
    )
    assert result.exit_code == EXIT_INVALID
    assert result.stderr.startswith("credit-gate: error: Invalid value for 'AMOUNT'")
    assert store.account_state("acme").balance == 0


def test_a_negative_amount_is_explained_not_taken_for_an_unknown_option(cli: Cli, store: RedisStore) -> None:
    result = cli.run("grant", "acme", "-5")
    assert result.exit_code == EXIT_INVALID
    assert "No such option" not in result.stderr
    assert "-5: amounts are whole numbers of credits and never negative" in result.stderr
    assert "credit-gate adjust-down ACCOUNT AMOUNT" in result.stderr
    assert store.account_state("acme").balance == 0
    assert "No such option '--bogus'" in cli.run("grant", "acme", "--bogus").stderr  # a real typo still is


def test_grant_to_an_unknown_account_is_refused_unless_created(cli: Cli, store: RedisStore) -> None:
    refused = cli.run("grant", "acme-typo", "5")
    assert refused.exit_code == EXIT_NOT_FOUND
    assert "pass --create to hold credit for it" in refused.stderr
    assert not store.account_state("acme-typo").exists
    assert cli.json("grant", "newco", "5", "--create")["balance"] == 5


def test_adjust_down_takes_credits_away(cli: Cli, admin: Admin, store: RedisStore) -> None:
    admin.grant("acme", 10)
    taken = cli.json("adjust-down", "acme", "4", "--note", "goodwill reversal")
    assert (taken["amount"], taken["balance"]) == (-4, 6)
    assert list(store.ledger("acme"))[-1].fields["kind"] == "adjust"


def test_adjust_down_never_goes_below_zero(cli: Cli, admin: Admin, store: RedisStore) -> None:
    admin.grant("acme", 3)
    result = cli.run("adjust-down", "acme", "4")
    assert result.exit_code == EXIT_CONFLICT
    assert result.stderr == (
        "credit-gate: error: account 'acme' has 3 credits; cannot take away 4 "
        "(the balance never goes below zero)\n"
    )
    assert store.account_state("acme").balance == 3


def test_adjust_down_of_an_unknown_account_exits_2(cli: Cli) -> None:
    assert cli.run("adjust-down", "ghost", "1").exit_code == EXIT_NOT_FOUND


def test_ledger_shows_the_newest_entries_oldest_first(cli: Cli, admin: Admin) -> None:
    for amount in (1, 2, 3):
        admin.grant("acme", amount, note=f"n{amount}")
    entries = cli.json("ledger", "acme", "--limit", "2")
    assert [(e["kind"], e["amount"], e["balance"], e["note"]) for e in entries] == [
        ("grant", 2, 3, "n2"),
        ("grant", 3, 6, "n3"),
    ]
    assert entries[0]["id"] == f"acme/{entries[0]['ledger_id']}"
    assert entries[0]["time"] == "2026-01-01T00:00:00Z"  # the admin fixture's clock
    table = cli.ok("ledger", "acme").stdout
    assert "note: n1" in table and "grant" in table


def test_ledger_of_an_unknown_account_exits_2(cli: Cli) -> None:
    assert cli.run("ledger", "ghost").exit_code == EXIT_NOT_FOUND


def test_verify_confirms_that_every_ledger_replays_to_its_balance(
    cli: Cli, admin: Admin, store: RedisStore
) -> None:
    admin.grant("acme", 10)
    store.charge(ChargeRequest("acme", 4, now=admin.now() + 1))
    newest = list(store.ledger("acme"))[-1].id
    (check,) = cli.json("verify")
    assert check == {
        "account": "acme",
        "balance": 6,
        "replayed": 6,
        "entries": 3,
        "through": newest,
        "ok": True,
    }
    table = cli.ok("verify").stdout
    assert "through" in table and newest in table  # the ledger entry the balance was checked as of


def test_verify_exits_5_when_a_balance_was_changed_behind_the_ledgers_back(
    cli: Cli, admin: Admin, store: RedisStore
) -> None:
    admin.grant("acme", 10)
    store.client.hincrby(store.keys.account("acme").state, "balance", 5)  # someone edited Redis by hand
    result = cli.run("verify", "acme")
    assert result.exit_code == EXIT_PROBLEMS
    assert "1 ledger(s) do not replay to the balance (e.g. 'acme')" in result.stderr


def test_a_key_reused_with_another_amount_exits_3_with_one_line_and_changes_nothing(
    cli: Cli, store: RedisStore
) -> None:
    first = cli.json("grant", "acme", "500", "--key", "in_1042")
    reused = cli.run("grant", "acme", "300", "--key", "in_1042")
    assert reused.exit_code == EXIT_CONFLICT
    assert reused.stdout == ""
    (line,) = reused.stderr.splitlines()
    assert line.startswith("credit-gate: error: ") and "in_1042" in line and first["ledger_id"] in line
    assert "Traceback" not in reused.stderr
    assert cli.run("adjust-down", "acme", "500", "--key", "in_1042").exit_code == EXIT_CONFLICT
    assert store.account_state("acme").balance == 500


def test_a_replay_reports_the_first_grant(cli: Cli) -> None:
    first = cli.json("grant", "acme", "500", "--key", "in_1042")
    again = cli.json("grant", "acme", "500", "--key", "in_1042")
    assert again == {**first, "applied": False}


def test_a_cli_key_named_like_a_webhook_event_does_not_swallow_the_webhook(
    cli: Cli, admin: Admin, store: RedisStore
) -> None:
    cli.ok("grant", "acme", "100", "--key", "webhook:inv-42")
    paid = admin.grant(
        "acme", 500, note="webhook inv-42", idempotency_key="webhook:inv-42", key_namespace=PAYMENT_KEYS
    )
    assert paid.applied and store.account_state("acme").balance == 600
