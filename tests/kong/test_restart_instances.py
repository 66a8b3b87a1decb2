"""After a plugin-server restart, a route never runs under another route's configuration.

Kong never learns that a Python plugin server restarted (kong-pdk sends no ``serverPid`` notice, and
Kong's process manager resets nothing when it respawns the server: kong/runloop/plugin_servers/
process.lua and plugin.lua), so its workers keep the old instance ids. If the new server numbered its
instances from 0 again, a fresh instance of route B could get the id route A's stale entry still
names, and A's paid requests would run with B's free configuration:

- Kong 3.4 re-creates only the failing plugin id, so one worker and two routes are enough;
- Kong 3.5+ re-create every instance of the plugin in the worker that met the error, and the other
  workers only when the ``reset_instances`` worker event reaches them, later.

Route A costs 5 and is sold in plan ``pro`` only; route B is free and open to any plan. The account is
on plan ``basic``: route A must always refuse it (402 plan_not_entitled) and route B let it through.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.gate_fixtures import start_plugin_server, through_gate
from tests.harness import KongRequest, KongSide, Outcome, PluginConfig, PluginInfo, PluginServerProcess

CONSUMER: dict[str, Any] = {
    "id": "5f1d8f0a-7c55-4d2b-9a55-0b8f5c6eacme",
    "username": "acme",
    "custom_id": None,
    "tags": None,
}


@pytest.fixture(params=["1", "2"], ids=["1-process", "2-processes"])
def server(request: pytest.FixtureRequest) -> Iterator[PluginServerProcess]:
    process = start_plugin_server("-g", "--processes", request.param)
    yield process
    process.stop()
    shutil.rmtree(Path(process.socket_path).parent, ignore_errors=True)


@pytest.fixture
def basic_account(admin: Admin, store: RedisStore) -> RedisStore:
    admin.apply_plan(Plan("basic", prepaid=True))
    admin.apply_plan(Plan("pro", prepaid=True))
    admin.subscribe(CONSUMER["id"], "basic", starts_at=admin.now() - 60)
    admin.grant(CONSUMER["id"], 100)
    return store


def routes(settings: RedisSettings) -> tuple[PluginConfig, PluginConfig]:
    redis = {"host": settings.host, "port": settings.port, "connect_timeout": 1000, "read_timeout": 1000}
    premium = PluginConfig(config={"redis": redis, "cost": 5, "plans": ["pro"]}, route_id="route-a")
    free = PluginConfig(config={"redis": redis, "cost": 0, "plans": []}, route_id="route-b")
    return premium, free


def send(kong: KongSide, plugin: PluginConfig) -> Outcome:
    return through_gate(kong, plugin, KongRequest(path="/v1/answer", consumer=CONSUMER))


def assert_premium_refused(outcome: Outcome) -> None:
    assert outcome.status == 402, "route A ran under route B's configuration"
    assert json.loads(outcome.body)["reason"] == "plan_not_entitled"


def test_kong_3_4_one_worker_two_routes_one_restart(
    server: PluginServerProcess, plugin_info: PluginInfo, settings: RedisSettings, basic_account: RedisStore
) -> None:
    premium, free = routes(settings)
    with KongSide(server.socket_path, plugin_info, timeout=10.0, kong_version="3.4") as kong:
        assert_premium_refused(send(kong, premium))  # started first: the lower id
        assert send(kong, free).proxied
        server.restart()
        # B meets "no plugin instance" first: Kong 3.4 re-creates B alone, A keeps its stale id.
        assert send(kong, free).proxied
        for _ in range(3):
            assert_premium_refused(send(kong, premium))
    assert basic_account.account_state(CONSUMER["id"]).balance == 100


def test_kong_3_9_two_workers_while_the_reset_event_is_on_its_way(
    server: PluginServerProcess, plugin_info: PluginInfo, settings: RedisSettings, basic_account: RedisStore
) -> None:
    premium, free = routes(settings)
    with (
        KongSide(server.socket_path, plugin_info, timeout=10.0, kong_version="3.9") as first,
        KongSide(server.socket_path, plugin_info, timeout=10.0, kong_version="3.9") as second,
    ):
        assert_premium_refused(send(second, premium))  # the second worker starts A: the lower id
        assert send(first, free).proxied
        server.restart()
        # The first worker meets the error and re-creates its instances; the second has not had the
        # worker event yet and still holds its old id for A.
        assert send(first, free).proxied
        for _ in range(3):
            assert_premium_refused(send(second, premium))
        second.reset_instances()  # the worker event arrives
        assert_premium_refused(send(second, premium))
    assert basic_account.account_state(CONSUMER["id"]).balance == 100


def test_kong_3_4_sends_no_seq_and_3_6_does(
    plugin_info: PluginInfo, settings: RedisSettings, tmp_path: Path
) -> None:
    plugin, _ = routes(settings)
    old = KongSide(tmp_path / "none.sock", plugin_info, kong_version="3.4").build_config(plugin)
    new = KongSide(tmp_path / "none.sock", plugin_info, kong_version="3.6").build_config(plugin)
    assert "__seq__" not in old
    assert new["__seq__"] == plugin.seq


def test_a_store_no_instance_uses_any_more_is_closed(
    plugin_info: PluginInfo, settings: RedisSettings, basic_account: RedisStore, redis_client: Any
) -> None:
    """20 changes of a setting that picks a Redis store (a timeout, as a password rotation would be):
    Redis connections and open files stay flat, because each old store is closed with its instance."""
    server = start_plugin_server("-g", "--processes", "1")
    try:
        _, free = routes(settings)
        with KongSide(server.socket_path, plugin_info, timeout=10.0) as kong:

            def connections() -> int:
                return sum(1 for c in redis_client.client_list() if c.get("name") != "test-observer")

            def open_files() -> int:
                return len(os.listdir(f"/proc/{server.pid}/fd"))

            redis_client.client_setname("test-observer")
            plugin = free
            assert send(kong, plugin).proxied
            before = (connections(), open_files())
            for i in range(20):
                redis = {**plugin.config["redis"], "read_timeout": 1001 + i}
                plugin = plugin.changed(redis=redis)
                assert send(kong, plugin).proxied
            assert len(kong.closed_instance_ids) == 20
            assert (connections(), open_files()) == before
    finally:
        server.stop()
        shutil.rmtree(Path(server.socket_path).parent, ignore_errors=True)
