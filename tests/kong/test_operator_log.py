"""What an operator must act on reaches Kong's error log at Kong's default level, once per cause.

Kong logs what the plugin server prints at INFO (kong/runloop/plugin_servers/process.lua, ``grab_logs``:
``raw_log(ngx_INFO, ...)``) and its default ``log_level`` is ``notice``, so printed lines are dropped by
default. The gate says these through ``kong.log.<level>`` inside an event, which Kong logs at that
level: here, the levels the harness records from those PDK calls.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.gate_fixtures import gate_config, start_plugin_server, through_gate
from tests.harness import KongRequest, KongSide, Outcome, PluginConfig, PluginInfo, PluginServerProcess
from tests.redis_servers import RedisServer

CONSUMER: dict[str, Any] = {
    "id": "7c2e0d5e-0b8f-4c6e-9a55-5f1d8f0aacme",
    "username": "acme",
    "custom_id": None,
    "tags": None,
}
# Kong's levels from the most severe down; notice is its default log_level.
SHOWN_BY_DEFAULT = ("crit", "alert", "emerg", "err", "warn", "notice")


@pytest.fixture
def server() -> Iterator[PluginServerProcess]:
    process = start_plugin_server("-g", "--processes", "1")
    yield process
    process.stop()
    shutil.rmtree(Path(process.socket_path).parent, ignore_errors=True)


def shown(outcome: Outcome, text: str) -> list[str]:
    return [
        line.message for line in outcome.log_lines if line.level in SHOWN_BY_DEFAULT and text in line.message
    ]


def send(kong: KongSide, plugin: PluginConfig) -> Outcome:
    return through_gate(kong, plugin, KongRequest(path="/v1/answer", consumer=CONSUMER), clean=False)


def test_an_invalid_configuration_is_in_kong_s_log_once(
    server: PluginServerProcess, plugin_info: PluginInfo, settings: RedisSettings
) -> None:
    plugin = gate_config(settings, settle_header="X-Usage-Cost")  # needs --log-phase, not given
    with KongSide(server.socket_path, plugin_info, timeout=10.0) as kong:
        outcomes = [send(kong, plugin) for _ in range(5)]
    assert all(outcome.status == 500 for outcome in outcomes)
    said = [shown(outcome, "invalid configuration") for outcome in outcomes]
    assert len(said[0]) == 1 and "--log-phase" in said[0][0]
    assert said[1:] == [[]] * 4


def test_the_circuit_opening_and_closing_are_each_in_kong_s_log_once(
    server: PluginServerProcess, plugin_info: PluginInfo, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    try:
        settings = RedisSettings(port=redis.port, connect_timeout=200, read_timeout=200)
        admin = Admin(RedisStore.from_settings(settings))
        admin.apply_plan(Plan("pro", prepaid=True))
        admin.subscribe(CONSUMER["id"], "pro", starts_at=admin.now() - 60)
        admin.grant(CONSUMER["id"], 100)
        admin.close()
        plugin = gate_config(settings, breaker_failures=2, breaker_cooldown_ms=200)
        with KongSide(server.socket_path, plugin_info, timeout=10.0) as kong:
            assert send(kong, plugin).proxied
            redis.pause()
            try:
                down = [send(kong, plugin) for _ in range(8)]
            finally:
                redis.resume()
            assert all(outcome.status == 503 for outcome in down)
            opened = [line for outcome in down for line in shown(outcome, "Redis circuit")]
            assert len(opened) == 1 and "-> open" in opened[0]
            up: list[Outcome] = []
            for _ in range(40):  # the cool-down passes, a probe succeeds, the circuit closes
                up.append(send(kong, plugin))
                if up[-1].proxied and len(up) > 3:
                    break
                time.sleep(0.05)  # the breaker's cool-down runs on the server's own clock
            closed = [line for outcome in up for line in shown(outcome, "Redis circuit")]
            assert len(closed) == 1 and "-> closed" in closed[0], closed
    finally:
        redis.stop()
