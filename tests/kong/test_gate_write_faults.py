"""A Redis that refuses writes, through the real plugin server: an outage like a lost connection.

503 ``store_unavailable``, or with ``fault_tolerant`` an unmetered pass-through; the circuit breaker
counts each refusal; Kong's error log says each cause once, at ``err``; and after a failover the gate
follows its address to the new master (the connection that answered READONLY is dropped).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from creditgate.core.config import RedisSettings
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.gate_fixtures import gate_config, short_dir, start_plugin_server, through_gate
from tests.harness import KongRequest, KongSide, Outcome, PluginConfig, PluginInfo, PluginServerProcess
from tests.redis_servers import RedisServer
from tests.store.test_write_faults import fail_a_save, fail_over, fill_to_maxmemory, point, seed

ACME = KongRequest(consumer={"id": "acme", "username": "acme", "custom_id": None})
SHOWN_BY_DEFAULT = ("crit", "alert", "emerg", "err", "warn", "notice")


def send(kong: KongSide, plugin: PluginConfig) -> Outcome:
    return through_gate(kong, plugin, ACME, clean=False)


def test_the_gate_follows_a_failover_after_one_readonly_answer(kong: KongSide, tmp_path: Path) -> None:
    sockets = short_dir()
    old = RedisServer(tmp_path / "old", unix_socket=sockets / "old.sock").start()
    new = RedisServer(tmp_path / "new", unix_socket=sockets / "new.sock").start()
    try:
        link = sockets / "redis.sock"
        point(link, old)
        settings = RedisSettings(socket_path=str(link), connect_timeout=500, read_timeout=500)
        seed(settings)
        plugin = PluginConfig(
            config={"redis": {"socket_path": str(link), "read_timeout": 500}, "breaker_failures": 0}
        )
        assert send(kong, plugin).proxied
        fail_over(old, new)
        point(link, new)
        refused = send(kong, plugin)
        assert refused.status == 503 and json.loads(refused.body)["reason"] == "store_unavailable"
        assert any("READONLY" in line for line in refused.logs("err"))
        assert send(kong, plugin).proxied  # a new connection, to the new master
        with new.client() as client:
            assert int(client.hget(RedisStore(client).keys.account("acme").state, "balance") or 0) == 998
    finally:
        old.stop()
        new.stop()
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture
def redis_timeout_ms() -> int:
    return 500


def test_without_fault_tolerant_a_redis_that_cannot_save_refuses_with_503(
    kong: KongSide, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin, tmp_path: Path
) -> None:
    plugin = gate_config(own_settings, breaker_failures=0)
    assert send(kong, plugin).proxied
    fail_a_save(own_redis, tmp_path)
    refused = send(kong, plugin)
    assert refused.status == 503 and json.loads(refused.body)["reason"] == "store_unavailable"
    assert funded.account("acme").balance == 1000 - 1
    own_redis.kill()  # SIGTERM would make it save first, fail and go on running for 5 s until killed


@pytest.fixture
def fresh_server() -> Iterator[PluginServerProcess]:
    """A plugin server of this test's own: what it says once per cause is said to this test."""
    process = start_plugin_server("-g", "--processes", "1")
    yield process
    process.stop()
    shutil.rmtree(Path(process.socket_path).parent, ignore_errors=True)


def shown(outcomes: list[Outcome], text: str, level: str) -> list[str]:
    return [
        line.message for o in outcomes for line in o.log_lines if line.level == level and text in line.message
    ]


def test_fault_tolerant_passes_a_redis_at_maxmemory_unmetered_opens_the_circuit_and_says_so_once(
    fresh_server: PluginServerProcess,
    plugin_info: PluginInfo,
    own_redis: RedisServer,
    own_settings: RedisSettings,
    funded: Admin,
    tmp_path: Path,
) -> None:
    config: dict[str, Any] = {"fault_tolerant": True, "breaker_failures": 2, "breaker_cooldown_ms": 60_000}
    plugin = gate_config(own_settings, **config)
    with KongSide(fresh_server.socket_path, plugin_info, timeout=10.0) as kong:
        assert send(kong, plugin).proxied
        fill_to_maxmemory(own_redis, tmp_path)
        with own_redis.client() as client:
            before = own_redis.command_calls(client)
            passed = [send(kong, plugin) for _ in range(6)]
            sent = own_redis.command_calls(client) - before
    assert all(o.proxied and o.upstream_headers.get("X-Credit-Plan") == "" for o in passed)
    assert all(any("UNMETERED" in line for line in o.logs("warn")) for o in passed)
    assert sent["evalsha"] == 2  # the circuit opened after two refusals: the others sent nothing
    said = shown(passed, "OOM", "err")
    assert len(said) == 1 and "maxmemory" in said[0], said
    assert len(shown(passed, "Redis circuit", "err")) == 1
    assert funded.account("acme").balance == 1000 - 1
