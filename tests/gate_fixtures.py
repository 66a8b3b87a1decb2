"""Fixtures that run the real credit-gate plugin server and play Kong's side against it."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.harness import (
    HeaderInput,
    KongRequest,
    KongSide,
    Outcome,
    PluginConfig,
    PluginInfo,
    PluginServerProcess,
)
from tests.redis_servers import RedisServer

# The console script pip installed next to this Python: the same command Kong's start_cmd runs.
PLUGIN_SERVER = [str(Path(sys.executable).with_name("credit-gate-pluginserver"))]


def short_dir() -> Path:
    """A temporary directory with a short path: unix socket paths are limited to 107 bytes."""
    return Path(tempfile.mkdtemp(prefix="cg-"))


def start_plugin_server(*flags: str) -> PluginServerProcess:
    return PluginServerProcess([*PLUGIN_SERVER, *flags], prefix=short_dir(), socket_name="credit-gate.sock")


def gate_config(settings: RedisSettings, **config: Any) -> PluginConfig:
    """A credit-gate plugin entry pointed at the test's Redis, as a route-level plugin by default."""
    redis = {
        "host": settings.host,
        "port": settings.port,
        "connect_timeout": settings.connect_timeout,
        "read_timeout": settings.read_timeout,
    }
    redis.update(config.pop("redis", {}))
    route_id = config.pop("route_id", "route-1")
    return PluginConfig(config={"redis": redis, **config}, route_id=route_id)


def through_gate(
    kong: KongSide,
    gate: RedisSettings | PluginConfig,
    request: KongRequest,
    upstream_status: int = 200,
    upstream_headers: HeaderInput | None = None,
    *,
    clean: bool = True,
    **config: Any,
) -> Outcome:
    """One request through a gate entry, its PDK exchange checked clean unless ``clean`` is False.

    ``gate`` is either the test's Redis, for a new entry of ``config`` pointed at it (a new entity, so
    Kong starts a new instance for it), or an entry the test made, which keeps one instance however many
    requests it takes, as Kong keeps an entity's instance until the entity changes.
    """
    if isinstance(gate, PluginConfig):
        if config:
            raise TypeError(f"config {sorted(config)} is for a new entry; change an entry with .changed()")
        plugin = gate
    else:
        plugin = gate_config(gate, **config)
    outcome = kong.request(plugin, request, upstream_status, upstream_headers)
    if clean:
        outcome.assert_clean()
    return outcome


@pytest.fixture(scope="session")
def plugin_info() -> PluginInfo:
    return PluginInfo.query(PLUGIN_SERVER)


# The plugin-server runtimes the gate is tested on: credit-gate's own (the default) and kong-pdk's, in
# gevent mode (the mode the docs give for it). kong-pdk's threads mode is tested by the end-to-end tests
# alone (test_gate_e2e.py): two runtimes on every server test keep CI within its time.
MODES = {"credit-gate": (), "kong-pdk": ("--runtime", "kong-pdk", "-g")}
KONG_PDK_THREADS = ("--runtime", "kong-pdk")


def serving(*flags: str) -> Iterator[PluginServerProcess]:
    """A plugin server for a fixture's lifetime, removed with its directory afterwards."""
    server = start_plugin_server(*flags)
    yield server
    server.stop()
    shutil.rmtree(Path(server.socket_path).parent, ignore_errors=True)


@pytest.fixture(scope="module", params=sorted(MODES))
def plugin_server(request: pytest.FixtureRequest) -> Iterator[PluginServerProcess]:
    yield from serving(*MODES[request.param])


def kong_side(
    plugin_server: PluginServerProcess, plugin_info: PluginInfo, kong_version: str = "3.9"
) -> Iterator[KongSide]:
    """Kong's side of one nginx worker on ``plugin_server``, by the rules of ``kong_version``."""
    if not plugin_server.running():
        plugin_server.start()
    with KongSide(plugin_server.socket_path, plugin_info, timeout=10.0, kong_version=kong_version) as side:
        yield side


@pytest.fixture
def kong(plugin_server: PluginServerProcess, plugin_info: PluginInfo) -> Iterator[KongSide]:
    yield from kong_side(plugin_server, plugin_info)


# A Redis of a test's own, which the test may stop, pause and restart; a module sets how long the
# gate waits on it with a `redis_timeout_ms` fixture of its own.


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    if server.process and server.process.poll() is None:
        server.resume()
    server.stop()


@pytest.fixture
def redis_timeout_ms() -> int:
    return 200


@pytest.fixture
def own_settings(own_redis: RedisServer, redis_timeout_ms: int) -> RedisSettings:
    return RedisSettings(port=own_redis.port, connect_timeout=redis_timeout_ms, read_timeout=redis_timeout_ms)


@pytest.fixture
def funded(own_settings: RedisSettings) -> Iterator[Admin]:
    """The account "acme" on plan "pro" with 1,000 credits, in the test's own Redis."""
    admin = Admin(RedisStore.from_settings(own_settings))
    admin.apply_plan(Plan("pro"))
    admin.subscribe("acme", "pro", starts_at=admin.now() - 10)
    admin.grant("acme", 1000)
    yield admin
    admin.close()
