"""`credit-gate kong-conf`: the settings that make a native Kong run credit-gate's plugin server."""

from __future__ import annotations

import subprocess

import pytest

from creditgate.ops.kong_conf import kong_conf
from tests.cli_support import CONSOLE_SCRIPT


def test_kong_conf_lines_for_the_default_prefix() -> None:
    assert kong_conf() == (
        "plugins = bundled,credit-gate\n"
        "pluginserver_names = credit-gate\n"
        "pluginserver_credit_gate_socket = /usr/local/kong/credit-gate.sock\n"
        "pluginserver_credit_gate_start_cmd = credit-gate-pluginserver -g --kong-prefix /usr/local/kong"
        " --socket-name credit-gate.sock\n"
        "pluginserver_credit_gate_query_cmd = credit-gate-pluginserver --dump\n"
    )


@pytest.mark.server
def test_environment_variables_can_be_sourced_by_a_shell() -> None:
    text = kong_conf("/opt/kong/", env=True)
    assert text.splitlines()[0] == "KONG_PLUGINS=bundled,credit-gate"
    assert "KONG_PLUGINSERVER_CREDIT_GATE_SOCKET=/opt/kong/credit-gate.sock\n" in text
    shell = subprocess.run(
        ["sh", "-c", f'set -a\n{text}echo "$KONG_PLUGINSERVER_CREDIT_GATE_START_CMD"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        shell.stdout == "credit-gate-pluginserver -g --kong-prefix /opt/kong --socket-name credit-gate.sock\n"
    )


@pytest.mark.server
def test_the_cli_prints_them_without_touching_redis() -> None:
    result = subprocess.run(
        [CONSOLE_SCRIPT, "--redis-url", "redis://127.0.0.1:1", "kong-conf", "--prefix", "/kong", "--env"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout == kong_conf("/kong", env=True)


@pytest.mark.server
def test_the_cli_prints_them_as_json() -> None:
    result = subprocess.run(
        [CONSOLE_SCRIPT, "kong-conf", "--json"], capture_output=True, text=True, timeout=30, check=False
    )
    assert '"pluginserver_credit_gate_query_cmd": "credit-gate-pluginserver --dump"' in result.stdout


def test_with_the_log_phase_both_commands_say_so() -> None:
    text = kong_conf(log_phase=True)
    assert "--socket-name credit-gate.sock --log-phase\n" in text
    assert "pluginserver_credit_gate_query_cmd = credit-gate-pluginserver --dump --log-phase\n" in text
