"""`credit-gate pool-cap` and `pool-caps`: the caps of a pooled balance's members."""

from __future__ import annotations

import pytest

from creditgate.cli import EXIT_INVALID, EXIT_NOT_FOUND
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.cli_support import Cli


@pytest.fixture
def cli(settings: RedisSettings, admin: Admin) -> Cli:
    return Cli(settings)


@pytest.fixture(autouse=True)
def team_a(admin: Admin) -> None:
    """The pool: an account like any other."""
    admin.apply_plan(Plan("team", period=Period.MONTH, allowance=0, prepaid=True))
    admin.subscribe("team-a", "team")


def test_a_cap_on_a_pool_that_does_not_exist_is_refused_and_nothing_written(
    cli: Cli, store: RedisStore
) -> None:
    result = cli.run("pool-cap", "team-b", "ann", "500")
    assert result.exit_code == EXIT_NOT_FOUND
    assert "no account named 'team-b'" in result.stderr
    assert store.member_caps("team-b") == {}
    assert cli.run("pool-cap", "team-b", "ann", "--remove").exit_code == EXIT_NOT_FOUND


def test_a_cap_is_set_listed_and_lifted(cli: Cli, store: RedisStore) -> None:
    assert cli.json("pool-cap", "team-a", "ann", "500") == {"pool": "team-a", "member": "ann", "cap": 500}
    assert cli.json("pool-caps", "team-a") == [{"member": "ann", "cap": 500}]
    assert store.member_caps("team-a") == {"ann": 500}
    cli.ok("pool-cap", "team-a", "ann", "--remove")
    assert cli.json("pool-caps", "team-a") == []


@pytest.mark.parametrize("args", [("1.5",), (), ("5", "--remove")])
def test_a_cap_must_be_a_whole_number_or_removed(cli: Cli, args: tuple[str, ...]) -> None:
    result = cli.run("pool-cap", "team-a", "ann", *args)
    assert result.exit_code == EXIT_INVALID
    assert result.stderr.count("\n") == 1
