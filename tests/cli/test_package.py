"""The CLI is a package of a few modules by subject that parse, call Admin and print: the rules about
the data live in Admin and the documents module, and nothing in the CLI knows the store."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from creditgate import cli
from creditgate.errors import InvalidDocument
from creditgate.ops.admin import UsageRow, credits_per_day
from creditgate.ops.documents import load_plan_files

PACKAGE = Path(cli.__file__).parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


@pytest.mark.parametrize("module", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_cli_module_imports_the_store(module: Path) -> None:
    store = sorted(name for name in imported_modules(module) if name.startswith("creditgate.store"))
    assert store == [], f"{module.name} imports {store}: ask Admin instead"


def test_every_command_of_every_subject_module_is_in_the_group() -> None:
    subjects = [cli.plans, cli.accounts, cli.credits, cli.reports, cli.events, cli.deployment]
    registered = {command.name for subject in subjects for command in subject.COMMANDS}
    assert registered == set(cli.cli.commands)
    assert callable(cli.main)  # the console script: credit-gate = "creditgate.cli:main"


def test_plans_from_several_files_are_refused_when_two_define_the_same_plan(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("name: pro\nallowance: 10\n")
    second.write_text("- name: team\n  allowance: 5\n- name: pro\n  allowance: 20\n")
    with pytest.raises(InvalidDocument, match="plan 'pro' is defined in more than one file"):
        load_plan_files([first, second])
    assert [plan.name for plan in load_plan_files([second])] == ["team", "pro"]


def test_credits_per_day_are_net_of_refunds_and_count_a_pools_charges_once() -> None:
    rows = [
        UsageRow("2026-01-01", "team", "route:a", requests=4, credits=10, refused=0, refunded=3),
        UsageRow("2026-01-01", "team", "route:a", requests=2, credits=6, refused=0, member="ann"),
        UsageRow("2026-01-01", "solo", "route:b", requests=1, credits=2, refused=1),
        UsageRow("2026-01-02", "solo", "route:b", requests=1, credits=0, refused=0),
    ]
    assert credits_per_day(rows) == {"2026-01-01": 9, "2026-01-02": 0}
