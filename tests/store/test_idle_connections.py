"""Connections Redis closed while idle (its ``timeout`` setting) are never used for a charge.

Through the plugin server on both of the store's paths (kong-pdk's threads: a pool of sockets;
credit-gate's runtime, on gevent's loop: one pipelined connection) and a real Redis started with
``timeout 1``: every request of a burst after an idle pause is charged and proxied, and each exactly once.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.gate_fixtures import KONG_PDK_THREADS, MODES, gate_config, start_plugin_server, through_gate
from tests.harness import KongRequest, KongSide, Outcome, PluginInfo, PluginServerProcess
from tests.redis_servers import RedisServer

ACME = {"id": "acme", "username": "acme", "custom_id": None, "tags": None}
BURST = 16


@pytest.fixture
def closing_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", extra=["--timeout", "1"]).start()
    yield server
    server.stop()


PATHS = {"pipelined": MODES["credit-gate"], "pooled": KONG_PDK_THREADS}


@pytest.fixture(params=sorted(PATHS))
def server(request: pytest.FixtureRequest) -> Iterator[PluginServerProcess]:
    server = start_plugin_server(*PATHS[request.param])
    yield server
    server.stop()
    shutil.rmtree(Path(server.socket_path).parent, ignore_errors=True)


def test_a_burst_after_redis_closed_the_idle_connections_is_charged_in_full(
    closing_redis: RedisServer, server: PluginServerProcess, plugin_info: PluginInfo
) -> None:
    settings = RedisSettings(port=closing_redis.port, connect_timeout=5000, read_timeout=5000)
    store = RedisStore.from_settings(settings)
    admin = Admin(store)
    admin.apply_plan(Plan("pro"))
    admin.subscribe("acme", "pro", starts_at=admin.now() - 10)
    admin.grant("acme", 1000)
    plugin = gate_config(settings, cost=1, breaker_failures=0)
    with KongSide(server.socket_path, plugin_info, timeout=10.0) as kong:

        def one(_: int) -> Outcome:
            return through_gate(kong, plugin, KongRequest(path="/v1/answer", consumer=ACME), clean=False)

        with ThreadPoolExecutor(BURST) as pool:
            first = list(pool.map(one, range(BURST)))  # fills the gate's pool with BURST sockets
            assert all(o.proxied for o in first), [o.logs() for o in first if not o.proxied][:2]
            # Redis's clock for `timeout` counts whole seconds: past 2 s every idle client is gone.
            time.sleep(2.5)
            assert closing_redis.client().client_list() and len(closing_redis.client().client_list()) <= 2
            second = list(pool.map(one, range(BURST)))

    statuses = [o.status for o in second]
    assert all(o.proxied for o in second), statuses
    assert store.account_state("acme").balance == 1000 - 2 * BURST  # each charged once
    charges = [e for e in store.ledger("acme") if e.fields["kind"] == "charge"]
    assert len(charges) == 2 * BURST
    store.close()
