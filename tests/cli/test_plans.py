"""`credit-gate plans`: apply from files, list, show, delete; every error names what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from creditgate.cli import EXIT_CONFLICT, EXIT_INVALID, EXIT_NOT_FOUND
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.ops.admin import Admin
from tests.cli_support import PLANS_YAML, Cli


@pytest.fixture
def cli(settings: RedisSettings) -> Cli:
    return Cli(settings)


@pytest.fixture
def plans_file(tmp_path: Path) -> Path:
    path = tmp_path / "plans.yaml"
    path.write_text(PLANS_YAML)
    return path


def test_apply_creates_the_plans_of_a_yaml_file(cli: Cli, plans_file: Path, admin: Admin) -> None:
    result = cli.ok("plans", "apply", str(plans_file))
    assert "Applied 2 plan(s)" in result.stdout
    assert [p.name for p in admin.plans()] == ["free", "pro"]
    assert admin.plan("free").prepaid is False


def test_apply_reads_a_json_file_with_one_plan(cli: Cli, tmp_path: Path, admin: Admin) -> None:
    path = tmp_path / "team.json"
    path.write_text('{"name": "team", "period": "week", "allowance": 50}')
    applied = cli.json("plans", "apply", str(path))
    assert applied == [
        {
            "name": "team",
            "period": "week",
            "allowance": 50,
            "prepaid": True,
            "title": "",
            "description": "",
            "accounts_updated": 0,
        }
    ]
    assert admin.plan("team").allowance == 50


def test_reapplying_a_plan_updates_its_subscribed_accounts(cli: Cli, plans_file: Path, admin: Admin) -> None:
    cli.ok("plans", "apply", str(plans_file))
    admin.subscribe("acme", "pro")
    plans_file.write_text(PLANS_YAML.replace("allowance: 1000", "allowance: 2000"))
    applied = cli.json("plans", "apply", str(plans_file))
    assert {p["name"]: p["accounts_updated"] for p in applied} == {"free": 0, "pro": 1}
    assert admin.account("acme").allowance == 2000


@pytest.mark.parametrize(
    ("allowance", "complaint"),
    [
        # In the operator's words (YAML's true, not Python's True), never jsonschema's own text.
        ("1.5", "must be a whole number, got 1.5"),
        ("true", "must be a whole number, got true"),
        ('"1e3"', "must be a whole number, got '1e3'"),
    ],
)
def test_an_allowance_that_is_not_a_whole_number_is_refused_naming_file_plan_and_field(
    cli: Cli, tmp_path: Path, admin: Admin, allowance: str, complaint: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"- name: ok\n- name: pro\n  allowance: {allowance}\n")
    result = cli.run("plans", "apply", str(path))
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == f"credit-gate: error: {path}: plan 'pro': allowance: {complaint}\n"
    assert admin.plans() == []  # the valid plan in the same file was not applied either


def test_a_float_allowance_in_json_is_refused(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"name": "pro", "allowance": 10.0}]')
    result = cli.run("plans", "apply", str(path))
    assert result.exit_code == EXIT_INVALID
    assert "plan 'pro': allowance: must be a whole number of credits, got 10.0" in result.stderr


def test_an_unknown_field_is_refused_with_the_plans_position_when_it_has_no_name(
    cli: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- allowance: 5\n  colour: red\n")
    result = cli.run("plans", "apply", str(path))
    assert result.exit_code == EXIT_INVALID
    assert f"{path}: plan #1: " in result.stderr
    assert (
        "has unknown field(s) 'colour'; the fields are: " in result.stderr
        or "is missing the required field(s) 'name'" in result.stderr
    )
    assert "was unexpected" not in result.stderr and "required property" not in result.stderr


def test_a_file_that_is_not_yaml_is_refused_with_its_line(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("plans:\n  - name: pro\n   allowance: [\n")
    result = cli.run("plans", "apply", str(path))
    assert result.exit_code == EXIT_INVALID
    assert result.stderr.startswith(f"credit-gate: error: {path}: is not valid YAML")
    assert "line" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_missing_file_is_refused(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("plans", "apply", str(tmp_path / "nope.yaml"))
    assert result.exit_code == EXIT_INVALID
    assert "nope.yaml: cannot read the file: No such file or directory" in result.stderr


def test_a_plan_defined_in_two_files_is_refused(cli: Cli, plans_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "more.yaml"
    other.write_text("name: pro\n")
    result = cli.run("plans", "apply", str(plans_file), str(other))
    assert result.exit_code == EXIT_INVALID
    assert "plan 'pro' is defined in more than one file" in result.stderr


def test_list_shows_every_plan(cli: Cli, plans_file: Path) -> None:
    cli.ok("plans", "apply", str(plans_file))
    table = cli.ok("plans", "list").stdout
    assert "free" in table and "pro" in table and "1000" in table
    assert [p["name"] for p in cli.json("plans", "list")] == ["free", "pro"]


def test_list_says_how_to_start_when_there_are_no_plans(cli: Cli) -> None:
    assert "credit-gate plans apply" in cli.ok("plans", "list").stdout
    assert cli.json("plans", "list") == []


def test_show_gives_the_plan_and_its_subscribers(cli: Cli, plans_file: Path, admin: Admin) -> None:
    cli.ok("plans", "apply", str(plans_file))
    admin.subscribe("acme", "pro")
    shown = cli.json("plans", "show", "pro")
    assert shown["allowance"] == 1000 and shown["subscribed_accounts"] == 1
    assert "subscribed accounts" in cli.ok("plans", "show", "pro").stdout


def test_show_of_an_unknown_plan_exits_2(cli: Cli) -> None:
    result = cli.run("plans", "show", "gold")
    assert result.exit_code == EXIT_NOT_FOUND
    assert (
        result.stderr
        == "credit-gate: error: no plan named 'gold'; `credit-gate plans list` shows the plans\n"
    )


def test_delete_is_refused_while_an_account_is_subscribed(cli: Cli, admin: Admin) -> None:
    admin.apply_plan(Plan("pro"))
    admin.subscribe("acme", "pro")
    result = cli.run("plans", "delete", "pro")
    assert result.exit_code == EXIT_CONFLICT
    assert "plan 'pro' is used by 1 account(s) (e.g. acme)" in result.stderr
    assert admin.plan("pro")


def test_delete_with_force_removes_a_plan_in_use(cli: Cli, admin: Admin) -> None:
    admin.apply_plan(Plan("pro"))
    admin.subscribe("acme", "pro")
    assert cli.json("plans", "delete", "pro", "--force") == {"deleted": "pro"}
    assert admin.plans() == []
    assert admin.account("acme").plan == "pro"  # its terms stay with the account


def test_delete_of_a_plan_whose_accounts_moved_away_needs_no_force(cli: Cli, admin: Admin) -> None:
    admin.apply_plan(Plan("pro"))
    admin.apply_plan(Plan("team"))
    admin.subscribe("acme", "pro")
    admin.change_plan("acme", "team")
    assert "Deleted plan 'pro'." in cli.ok("plans", "delete", "pro").stdout
