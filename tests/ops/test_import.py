"""`credit-gate import`: accounts, subscriptions and opening balances from CSV, idempotent per row."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from creditgate.cli import EXIT_INVALID, EXIT_PROBLEMS, EXIT_STORE
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.cli_support import Cli
from tests.redis_servers import free_port

JAN_1 = 1_767_225_600  # 2026-01-01T00:00:00Z

GOOD = """\
account,plan,status,starts_at,expires_at,balance,note
acme,pro,active,2026-01-01T00:00:00Z,,500,migrated from v1
globex,free,trialing,1767225600,2027-01-01,,
initech,,,,,25,
"""


@pytest.fixture
def cli(settings: RedisSettings, admin: Admin) -> Cli:
    admin.apply_plan(Plan("free", period=Period.MONTH, allowance=100, prepaid=False))
    admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=1000))
    return Cli(settings)


def write(tmp_path: Path, text: str, name: str = "accounts.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_rows_create_subscriptions_and_opening_balances(cli: Cli, tmp_path: Path, store: RedisStore) -> None:
    report = cli.json("import", str(write(tmp_path, GOOD)))
    assert report == {
        "rows": 3,
        "applied": 3,
        "granted_credits": 525,
        "grants_already_applied": 0,
        "rejected": [],
    }
    acme = store.account_state("acme")
    assert (acme.plan, acme.status, acme.starts_at, acme.balance) == ("pro", "active", JAN_1, 500)
    globex = store.account_state("globex")
    assert (globex.plan, globex.status, globex.expires_at, globex.balance) == (
        "free",
        "trialing",
        1_798_761_600,
        0,
    )
    assert (store.account_state("initech").plan, store.account_state("initech").balance) == ("", 25)
    (grant,) = list(store.ledger("acme"))
    assert (grant.fields["kind"], grant.fields["note"], grant.fields["key"]) == (
        "grant",
        "migrated from v1",
        "import:acme",
    )
    assert store.account_names() == ["acme", "globex", "initech"]


def test_importing_the_same_file_again_changes_nothing(cli: Cli, tmp_path: Path, store: RedisStore) -> None:
    path = write(tmp_path, GOOD)
    cli.ok("import", str(path))
    store.charge(ChargeRequest("acme", 3, now=JAN_1 + 5))
    before = {a: store.account_state(a) for a in ("acme", "globex", "initech")}
    report = cli.json("import", str(path))
    assert (report["applied"], report["granted_credits"], report["grants_already_applied"]) == (3, 0, 2)
    assert {a: store.account_state(a) for a in before} == before
    assert [e.fields["kind"] for e in store.ledger("acme")].count("grant") == 1


def test_a_row_without_times_keeps_the_current_subscription(
    cli: Cli, tmp_path: Path, admin: Admin, store: RedisStore
) -> None:
    admin.subscribe("acme", "free", starts_at=JAN_1 - 100, anchor=JAN_1 - 50)
    store.charge(ChargeRequest("acme", 2, now=JAN_1 + 10))
    cli.ok("import", str(write(tmp_path, "account,plan\nacme,pro\n")))
    state = store.account_state("acme")
    assert (state.plan, state.starts_at, state.anchor, state.used) == ("pro", JAN_1 - 100, JAN_1 - 50, 2)


def test_bad_rows_are_rejected_with_their_line_and_the_others_applied(
    cli: Cli, tmp_path: Path, store: RedisStore
) -> None:
    text = (
        "account,plan,balance,starts_at,status\n"
        "good-1,pro,10,,\n"
        "bad-amount,pro,1.5,,\n"
        "bad-plan,gold,10,,\n"
        "bad-time,pro,10,yesterday,\n"
        "bad-status,pro,10,,paused\n"
        "good-1,pro,99,,\n"
        "good-2,,7,,\n"
    )
    rejects = tmp_path / "rejects.csv"
    result = cli.run("import", str(write(tmp_path, text)), "--rejects", str(rejects))
    assert result.exit_code == EXIT_PROBLEMS
    assert (
        "Imported 2 of 7 rows: 17 credits granted, 0 opening balance(s) already imported, 5 rejected."
        in result.stdout
    )
    assert store.account_names() == ["good-1", "good-2"]
    for bad in ("bad-amount", "bad-plan", "bad-time", "bad-status"):
        assert not store.account_state(bad).exists
    assert store.account_state("good-1").balance == 10
    rows = list(csv.DictReader(rejects.open()))
    assert [(r["line"], r["account"]) for r in rows] == [
        ("3", "bad-amount"),
        ("4", "bad-plan"),
        ("5", "bad-time"),
        ("6", "bad-status"),
        ("7", "good-1"),
    ]
    errors = [r["error"] for r in rows]
    assert errors[0] == "balance: must be a whole number of credits in digits, got '1.5'"
    assert errors[1].startswith("no plan named 'gold'")
    assert errors[2].startswith("starts_at: must be an RFC 3339 time")
    assert errors[3].startswith("status: must be one of")
    assert errors[4] == "account: appears again (first at line 2); give each account one row"


def test_a_rejects_file_once_fixed_imports_as_it_is(cli: Cli, tmp_path: Path, store: RedisStore) -> None:
    text = "account,plan,balance\ngood,pro,10\nbad-amount,pro,1.5\n"
    rejects = tmp_path / "rejects.csv"
    assert cli.run("import", str(write(tmp_path, text)), "--rejects", str(rejects)).exit_code == EXIT_PROBLEMS
    fixed = rejects.read_text().replace(",1.5,", ",15,")
    assert "line" in fixed.splitlines()[0] and "error" in fixed.splitlines()[0]  # left as written
    result = cli.run("import", str(write(tmp_path, fixed, "fixed.csv")))
    assert result.exit_code == 0, result.stdout
    assert store.account_state("bad-amount").balance == 15


def test_a_status_without_a_plan_is_rejected_and_nothing_of_the_row_applied(
    cli: Cli, tmp_path: Path, store: RedisStore
) -> None:
    report = cli.run("import", str(write(tmp_path, "account,status,balance\nacme,suspended,40\n")), "--json")
    assert report.exit_code == EXIT_PROBLEMS
    assert "plan: is needed to set status" in report.stdout
    assert not store.account_state("acme").exists


def test_an_explicit_key_lets_a_later_file_grant_again(cli: Cli, tmp_path: Path, store: RedisStore) -> None:
    cli.ok("import", str(write(tmp_path, "account,balance\nacme,10\n", "one.csv")))
    cli.ok("import", str(write(tmp_path, "account,balance,key\nacme,5,bonus-2026\n", "two.csv")))
    assert store.account_state("acme").balance == 15


def test_a_file_with_unknown_columns_is_refused_before_any_row(
    cli: Cli, tmp_path: Path, store: RedisStore
) -> None:
    path = write(tmp_path, "account,credits\nacme,10\n")
    result = cli.run("import", str(path))
    assert result.exit_code == EXIT_INVALID
    assert f"{path}: header: has the columns ['account', 'credits']" in result.stderr
    assert store.account_names() == []


def test_a_missing_file_is_refused(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("import", str(tmp_path / "nope.csv"))
    assert result.exit_code == EXIT_INVALID
    assert "nope.csv: cannot read the file" in result.stderr


def test_a_spreadsheets_byte_order_mark_is_not_part_of_the_header(
    cli: Cli, tmp_path: Path, store: RedisStore
) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffaccount,balance\r\nacme,3\r\n".encode())
    cli.ok("import", str(path))
    assert store.account_state("acme").balance == 3


def test_redis_unreachable_stops_the_import_with_exit_4(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("--redis-url", f"redis://127.0.0.1:{free_port()}", "import", str(write(tmp_path, GOOD)))
    assert result.exit_code == EXIT_STORE
    assert "importing the file again is safe" in result.stderr
