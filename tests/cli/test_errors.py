"""Failures as an operator meets them: one line on stderr, no traceback, and an exit code that means it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from creditgate.cli import EXIT_INVALID, EXIT_NOT_FOUND, EXIT_STORE
from creditgate.core.config import RedisSettings
from creditgate.ops.admin import Admin
from tests.cli_support import Cli
from tests.counting_listener import CountingListener
from tests.redis_servers import RedisServer, free_port


@pytest.fixture
def cli(settings: RedisSettings) -> Cli:
    return Cli(settings)


def assert_one_line(stderr: str) -> None:
    assert stderr.startswith("credit-gate: error: ")
    assert stderr.count("\n") == 1
    assert "Traceback" not in stderr


@pytest.mark.server  # the listener in place of Redis
def test_an_unreachable_redis_exits_4_at_once_with_where_it_looked(cli: Cli) -> None:
    port = free_port()
    result = cli.script("--redis-url", f"redis://127.0.0.1:{port}/0", "balance", "acme")
    assert result.returncode == EXIT_STORE
    assert result.stdout == ""
    assert_one_line(result.stderr)
    assert f"cannot use Redis at redis://127.0.0.1:{port}/0 (" in result.stderr
    assert "check that it runs and that --redis-url (or CREDIT_GATE_REDIS_URL)" in result.stderr
    # At once: one connection tried, never again after a back-off.
    with CountingListener.tcp(0) as listener:
        closed = cli.script("--redis-url", f"redis://127.0.0.1:{listener.port}/0", "balance", "acme")
    assert closed.returncode == EXIT_STORE
    assert listener.attempts == 1


def test_a_redis_that_does_not_answer_exits_4_within_the_timeout(
    cli: Cli, own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    connected: list[Admin] = []
    connect = Admin.connect

    def recording(*args: Any, **kwargs: Any) -> Admin:
        connected.append(connect(*args, **kwargs))
        return connected[-1]

    monkeypatch.setattr(Admin, "connect", recording)
    url = f"redis://127.0.0.1:{own_redis.port}"

    def plans_list() -> list[Result]:
        return [cli.run("--redis-url", url, "--timeout", "0.3", "plans", "list")]

    [result], sent = own_redis.while_paused(plans_list)
    assert result.exit_code == EXIT_STORE
    assert_one_line(result.stderr)
    assert "Timeout" in result.stderr or "timed out" in result.stderr
    # Within the timeout: the client waits 0.3 s for each connect and each reply, and sent one command
    # only (the first went unanswered, and nothing was sent again).
    [admin] = connected
    options = admin.store.client.connection_pool.connection_kwargs
    assert (options["socket_connect_timeout"], options["socket_timeout"]) == (0.3, 0.3)
    assert sent.total() == 1


def test_the_password_of_the_redis_url_is_never_printed(cli: Cli) -> None:
    result = cli.run("--redis-url", f"redis://ops:s3cret@127.0.0.1:{free_port()}/2", "accounts")
    assert result.exit_code == EXIT_STORE
    assert "s3cret" not in result.stderr
    assert "redis://ops@127.0.0.1:" in result.stderr


def test_a_redis_url_that_is_not_one_is_a_usage_error(cli: Cli) -> None:
    result = cli.run("--redis-url", "http://127.0.0.1:6379", "accounts")
    assert result.exit_code == EXIT_INVALID
    assert_one_line(result.stderr)
    assert "Redis URL must start with redis://, rediss:// (TLS) or unix:// (a socket path)" in result.stderr


def test_a_database_number_out_of_range_is_refused(cli: Cli) -> None:
    result = cli.run("--redis-url", "redis://127.0.0.1:6379/99", "accounts")
    assert result.exit_code == EXIT_INVALID
    assert "database must be a number from 0 to 15" in result.stderr


def test_a_key_prefix_with_braces_is_refused(cli: Cli) -> None:
    result = cli.run("--key-prefix", "cg{x}", "accounts")
    assert result.exit_code == EXIT_INVALID
    assert_one_line(result.stderr)
    assert "key prefix must be 1-64 characters" in result.stderr


def test_the_key_prefix_separates_two_deployments_in_one_redis(cli: Cli) -> None:
    cli.ok("--key-prefix", "staging", "grant", "acme", "5", "--create")
    assert cli.run("balance", "acme").exit_code == EXIT_NOT_FOUND
    assert cli.json("--key-prefix", "staging", "balance", "acme")["balance"] == 5


def test_the_key_prefix_is_read_from_the_environment(cli: Cli) -> None:
    cli.env["CREDIT_GATE_KEY_PREFIX"] = "staging"
    cli.ok("grant", "acme", "5", "--create")
    del cli.env["CREDIT_GATE_KEY_PREFIX"]
    assert cli.json("--key-prefix", "staging", "balance", "acme")["balance"] == 5


def test_a_missing_argument_exits_1_and_points_to_help(cli: Cli) -> None:
    result = cli.script("grant", "acme")
    assert result.returncode == EXIT_INVALID
    assert (
        result.stderr == "credit-gate: error: Missing argument 'AMOUNT'. (see `credit-gate grant --help`)\n"
    )


def test_an_unknown_command_exits_1(cli: Cli) -> None:
    result = cli.script("refund", "acme", "5")
    assert result.returncode == EXIT_INVALID
    assert_one_line(result.stderr)
    assert "No such command 'refund'" in result.stderr


def test_the_console_script_reports_not_found_with_exit_2(cli: Cli) -> None:
    result = cli.script("plans", "show", "gold")
    assert result.returncode == EXIT_NOT_FOUND
    assert (
        result.stderr
        == "credit-gate: error: no plan named 'gold'; `credit-gate plans list` shows the plans\n"
    )


def test_an_invalid_plan_name_is_refused_before_redis_is_asked(cli: Cli) -> None:
    result = cli.run("--redis-url", f"redis://127.0.0.1:{free_port()}", "plans", "show", "Gold Plan")
    assert result.exit_code == EXIT_INVALID
    assert "plan: must be 1-64 characters of a-z" in result.stderr


def test_help_and_version_exit_0(cli: Cli) -> None:
    assert "Exit codes: 0 done, 1 invalid input, 2 not found" in cli.ok("--help").stdout
    assert "credit-gate, version" in cli.ok("--version").stdout


@pytest.mark.server  # credit-gate serve, a process
def test_serve_without_tokens_warns_as_a_warning_and_serves(redis_server: RedisServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDIT_GATE_")}
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    command = [
        str(Path(sys.executable).parent / "credit-gate"),
        "--redis-url",
        url,
        "serve",
        "--port",
        str(free_port()),
    ]
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as serving:
        try:
            assert serving.stderr is not None
            first = serving.stderr.readline()
        finally:
            serving.terminate()
            serving.wait(timeout=30)
    assert first.startswith("credit-gate: warning: no API token is configured"), first
    assert "error" not in first
