"""The CLI as an operator meets it on a terminal of 80 columns, in pipes, and with typos.

Ids and times are copied out of tables and grepped, so they never wrap; a pipe closed by its reader is
not invalid input; flags that contradict each other, a status or an amount mistyped, a relative Kong
prefix, a Redis that wants a password: each gets one line that says what to do, in the operator's words.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from creditgate.cli import EXIT_CONFLICT, EXIT_INVALID, EXIT_PIPE_CLOSED, EXIT_STORE
from creditgate.core.config import RedisSettings
from creditgate.kong import processes
from creditgate.ops.admin import Admin
from tests.cli_support import CONSOLE_SCRIPT, PLANS_YAML, Cli
from tests.redis_servers import RedisServer

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

IDS = ["3f2504e0-4f89-11d3-9a0c-0305e82c3301", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"]
INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture
def cli(settings: RedisSettings) -> Cli:
    return Cli(settings)


@pytest.fixture
def plans(cli: Cli, tmp_path: Path) -> Path:
    path = tmp_path / "plans.yaml"
    path.write_text(PLANS_YAML)
    cli.ok("plans", "apply", str(path))
    return path


@pytest.fixture
def uuid_accounts(cli: Cli, plans: Path) -> list[str]:
    for account in IDS:
        cli.ok("subscribe", account, "pro")
        cli.ok(
            "grant",
            account,
            "25",
            "--key",
            f"opening-{IDS.index(account)}",
            "--note",
            "a note long enough to fold",
        )
    return IDS


def at_80_columns(cli: Cli, *args: str) -> str:
    result = cli.script(*args, env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    return result.stdout


# Tables


@pytest.mark.parametrize("command", [["accounts"], ["ledger", IDS[0]], ["balance", IDS[0]], ["verify"]])
def test_ids_and_times_never_wrap_in_a_table_at_80_columns(
    cli: Cli, uuid_accounts: list[str], command: list[str]
) -> None:
    out = at_80_columns(cli, *command)
    if command[0] == "ledger":
        assert len(re.findall(r"^\d{13}-\d+ ", out, re.MULTILINE)) == 1, out  # the ledger id, whole
    else:
        assert all(account in out for account in uuid_accounts[: 1 if command[0] == "balance" else 2]), out
    for line in out.splitlines():
        # A wrapped id or time leaves a piece of it at the end of a line.
        for account in uuid_accounts:
            for cut in range(8, len(account)):
                assert not line.rstrip().endswith(account[:cut]) or account in line, (line, out)
    assert INSTANT.search(out) or command == ["verify"], out
    assert not re.search(r"\d{4}-\d\d-\d\dT[\d:]*\s*$", out, re.MULTILINE), out


def test_prepaid_reads_the_same_in_every_table(cli: Cli, plans: Path, admin: Admin) -> None:
    admin.subscribe("acme", "pro")
    listed = at_80_columns(cli, "plans", "list")
    assert re.search(r"^pro\s+month\s+1000\s+yes\s+Pro", listed, re.MULTILINE), listed
    assert re.search(r"^free\s+month\s+100\s+no\s+Free", listed, re.MULTILINE), listed
    assert re.search(r"^prepaid\s+yes\s*$", at_80_columns(cli, "plans", "show", "pro"), re.MULTILINE)
    assert re.search(r"^prepaid use\s+yes\s*$", at_80_columns(cli, "balance", "acme"), re.MULTILINE)
    assert "true" not in at_80_columns(cli, "plans", "show", "pro")


def test_one_credit_is_singular(cli: Cli, plans: Path, admin: Admin) -> None:
    admin.subscribe("acme", "pro")
    assert cli.ok("grant", "acme", "1").stdout.startswith("Granted 1 credit to 'acme': balance 1 ")
    assert cli.ok("grant", "acme", "2").stdout.startswith("Granted 2 credits to 'acme': balance 3 ")
    assert cli.ok("adjust-down", "acme", "1").stdout.startswith("Took 1 credit from 'acme': balance 2 ")


# Pipes


def test_an_export_whose_reader_stops_early_exits_141_and_still_says_how_far_it_got(
    cli: Cli, plans: Path, admin: Admin
) -> None:
    """`credit-gate export | head -n 2`: more than a pipe's buffer (64 KiB), so the writer meets EPIPE."""
    admin.subscribe("acme", "pro")
    for i in range(800):
        admin.grant("acme", 1, idempotency_key=f"k{i}", note="x" * 60)
    process = subprocess.Popen(
        [CONSOLE_SCRIPT, "export"],
        env={**os.environ, **cli.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    first = [process.stdout.readline(), process.stdout.readline()]
    process.stdout.close()  # what head does after its two lines
    stderr = process.stderr.read()
    assert process.wait(30) == EXIT_PIPE_CLOSED, stderr
    assert all(line.startswith('{"id":"acme/') for line in first)
    assert re.fullmatch(
        r"credit-gate: export stopped: the reader closed the output after at most \d+ of the ledger "
        r"entries \(use --output FILE for the whole export\)\n",
        stderr,
    ), stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr


def test_a_whole_export_says_how_many_entries_it_wrote(cli: Cli, plans: Path, admin: Admin) -> None:
    admin.subscribe("acme", "pro")
    admin.grant("acme", 5)
    result = cli.script("export")
    assert result.returncode == 0
    assert result.stderr == "credit-gate: exported 1 ledger entry\n"


# Conflicting or mistyped input


@pytest.mark.parametrize(
    "args",
    [
        ["usage", "--format", "csv", "--json"],
        ["usage", "--format", "table", "--json"],
        ["export", "--format", "csv", "--json"],
    ],
)
def test_json_and_another_format_together_are_a_usage_error(cli: Cli, args: list[str]) -> None:
    result = cli.run(*args)
    assert result.exit_code == EXIT_INVALID
    fmt = args[2]
    assert f"--json and --format {fmt} conflict: give one of them" in result.stderr
    assert result.stdout == ""


def test_json_with_the_same_format_is_fine(cli: Cli) -> None:
    assert cli.run("usage", "--format", "json", "--json").exit_code == 0
    assert cli.run("export", "--format", "jsonl", "--json").exit_code == 0


def test_deleting_a_plan_in_use_names_the_force_flag(cli: Cli, plans: Path, admin: Admin) -> None:
    admin.subscribe("acme", "pro")
    result = cli.run("plans", "delete", "pro")
    assert result.exit_code == EXIT_CONFLICT
    assert "or pass --force to delete it anyway" in result.stderr
    assert cli.run("plans", "delete", "pro", "--force").exit_code == 0


def test_an_unknown_status_lists_the_valid_ones_under_the_arguments_name(cli: Cli) -> None:
    result = cli.run("set-status", "acme", "bogus")
    assert result.exit_code == EXIT_INVALID
    assert (
        "Invalid value for 'STATUS': 'bogus' is not one of 'active', 'trialing', 'past_due'" in result.stderr
    )
    assert "{active|" not in result.stderr


@pytest.mark.parametrize("amount", [" 7", "7 ", "\t7"])
def test_an_amount_with_spaces_is_refused(cli: Cli, plans: Path, admin: Admin, amount: str) -> None:
    admin.subscribe("acme", "pro")
    result = cli.run("grant", "acme", amount)
    assert result.exit_code == EXIT_INVALID
    assert (
        "Invalid value for 'AMOUNT': must be a whole number of credits in digits, without spaces"
        in result.stderr
    )
    assert admin.view("acme").balance == 0


def test_a_plan_field_that_does_not_exist_is_named_with_the_fields_that_do(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "plans.yaml"
    path.write_text("- name: pro\n  allowance: 5\n  colour: red\n")
    result = cli.run("plans", "apply", str(path))
    assert result.exit_code == EXIT_INVALID
    assert result.stderr.startswith(
        f"credit-gate: error: {path}: plan 'pro': has unknown field(s) 'colour'; the fields are: allowance, "
    )
    assert "Additional properties" not in result.stderr


@pytest.mark.parametrize("prefix", ["relative/path", "kong", "./kong", "~/kong"])
def test_kong_conf_refuses_a_relative_prefix(cli: Cli, prefix: str) -> None:
    result = cli.run("kong-conf", "--prefix", prefix)
    assert result.exit_code == EXIT_INVALID
    assert "--prefix: must be an absolute path (Kong's prefix, e.g. /usr/local/kong)" in result.stderr
    assert result.stdout == ""


def test_the_plugin_servers_help_shows_the_log_phase_flag() -> None:
    server = str(Path(sys.executable).with_name("credit-gate-pluginserver"))
    result = subprocess.run([server, "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0
    assert "--log-phase" in result.stdout and "--dump" in result.stdout
    assert "empty environment" in result.stdout
    # The socket it listens on by default is the plugin's, not kong-pdk's.
    assert "credit-gate.sock" in " ".join(result.stdout.split())
    assert "python_pluginserver.sock" not in result.stdout


# Credentials


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "locked").start()
    with server.client() as client:
        client.config_set("requirepass", "s3cret")
    yield server
    server.stop()


def test_a_redis_that_wants_a_password_gets_a_hint_about_the_credentials(
    redis_with_password: RedisServer,
) -> None:
    for url in (
        f"redis://127.0.0.1:{redis_with_password.port}/0",
        f"redis://:wrong@127.0.0.1:{redis_with_password.port}/0",
    ):
        result = Cli.__new__(Cli)
        result.env = {"CREDIT_GATE_REDIS_URL": url, "COLUMNS": "160"}
        outcome = result.script("accounts")
        assert outcome.returncode == EXIT_STORE
        assert "give the ACL user and password it expects" in outcome.stderr, outcome.stderr
        assert "wrong" not in outcome.stderr


def test_the_plugin_server_names_an_unknown_flag_before_starting_anything(tmp_path: Path) -> None:
    server = str(Path(sys.executable).with_name("credit-gate-pluginserver"))
    result = subprocess.run(
        [server, "--bogus", "-p", str(tmp_path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "unknown argument(s): --bogus" in result.stderr
    assert "prefix" not in result.stderr and not list(tmp_path.iterdir())  # no socket, no process


def test_every_flag_the_plugin_servers_help_lists_is_taken() -> None:
    server = str(Path(sys.executable).with_name("credit-gate-pluginserver"))
    text = subprocess.run([server, "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
    flags = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", text.split("credit-gate:")[0])) - {"-h", "--help"}
    assert {"--kong-prefix", "--socket-name", "--dump", "-g", "--no-lua-style"} <= flags
    for flag in sorted(flags):
        value = (
            ["x"]
            if flag in {"-p", "--kong-prefix", "-kong-prefix", "--socket-name", "--listen-queue-size"}
            else []
        )
        assert processes.unknown_flags([flag, *value]) == [], flag
