"""Self-tests of the whole-node harness (tests/harness/node.py), against the real credit-gate plugin server.

They hold the harness to what Kong does: a peer process per nginx worker, the reset worker event by each
release's rules and after its delay, the respawn at most once a second, a configuration change in every
worker. The last one plays the restart mix-up on a node, with the reset event still on its way.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.ops.admin import Admin
from tests.gate_fixtures import gate_config, serving, short_dir
from tests.harness import (
    KONG_VERSIONS,
    RULES,
    KongNode,
    KongRequest,
    KongSide,
    KongWouldBypass,
    NodeResult,
    PluginInfo,
    PluginServerProcess,
)
from tests.harness.worker import InstanceInfo

CONSUMER: dict[str, Any] = {"id": "acme", "username": "acme", "custom_id": None}


@pytest.fixture(scope="module")
def server() -> Iterator[PluginServerProcess]:
    yield from serving("-g", "--processes", "1")


@pytest.fixture(scope="module")
def two_processes() -> Iterator[PluginServerProcess]:
    yield from serving("-g", "--processes", "2")


@pytest.fixture
def basic_account(admin: Admin) -> Admin:
    """On plan ``basic``: route A (plans [pro]) must refuse it, route B (any plan) let it through."""
    admin.apply_plan(Plan("basic", prepaid=True))
    admin.apply_plan(Plan("pro", prepaid=True))
    admin.subscribe(CONSUMER["id"], "basic", starts_at=admin.now() - 60)
    admin.grant(CONSUMER["id"], 100)
    return admin


def configure(node: KongNode, settings: RedisSettings) -> None:
    node.configure(
        [
            gate_config(settings, cost=5, plans=["pro"], route_id="route-a"),
            gate_config(settings, cost=0, route_id="route-b"),
        ]
    )


def send(node: KongNode, route: str, worker: int) -> NodeResult:
    result = node.request(route, KongRequest(consumer=CONSUMER), worker=worker)
    assert result.outcome is not None, result.bypass
    result.outcome.assert_clean()
    return result


def refused_as_premium(result: NodeResult) -> bool:
    outcome = result.outcome
    assert outcome is not None
    return outcome.status == 402 and json.loads(outcome.body)["reason"] == "plan_not_entitled"


def server_pid(connection: socket.socket) -> int:
    """The pid of the server process behind a connection (kong-pdk's ``GetStatus``)."""
    with connection:
        connection.settimeout(10)
        connection.sendall(msgpack.packb([0, 1, "plugin.GetStatus", [None]]))
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        while True:
            chunk = connection.recv(65536)
            assert chunk, "the server closed the connection"
            unpacker.feed(chunk)
            for message in unpacker:
                return int(message[3]["Pid"])


def test_each_worker_connects_from_a_process_of_its_own_and_stays_in_one_server_process(
    two_processes: PluginServerProcess, plugin_info: PluginInfo
) -> None:
    with KongNode(two_processes, plugin_info, workers=4, respawn=False) as node:
        pids = []
        for worker in node.workers:
            assert worker.connector is not None
            pids.append({server_pid(worker.connector(two_processes.socket_path)) for _ in range(4)})
        assert all(len(p) == 1 for p in pids)  # one process per nginx worker, as the acceptor pins it
        assert len(set().union(*pids)) == 2  # and the workers spread over both processes
        assert len({w.connector.pid for w in node.workers if w.connector}) == 4


@pytest.mark.parametrize("kong_version", KONG_VERSIONS)
def test_the_reset_event_reaches_the_workers_that_registered_it_after_its_delay(
    server: PluginServerProcess,
    plugin_info: PluginInfo,
    settings: RedisSettings,
    basic_account: Admin,
    kong_version: str,
) -> None:
    with KongNode(server, plugin_info, workers=3, kong_version=kong_version, event_delay=0.3) as node:
        configure(node, settings)
        for worker in range(3):
            send(node, "route-a", worker)
            send(node, "route-b", worker)

        def cached() -> list[int]:
            """How many of the two instances each worker still holds."""
            return [
                sum(w.side.cached_instance_id(node.plugin(r)) is not None for r in ("route-a", "route-b"))
                for w in node.workers
            ]

        node.workers[1].side.reset_instances(node.plugin("route-a").plugin_id)  # worker 1 met the error
        at_once = cached()
        node.settle_events()
        later = cached()
    expected = {"3.4": ([2, 1, 2], [2, 1, 2]), "3.6": ([2, 0, 2], [0, 0, 2]), "3.9": ([2, 0, 2], [0, 0, 0])}
    assert (at_once, later) == expected[kong_version]
    assert node.events_posted == (1 if RULES[kong_version].posts_reset_event else 0)


# A stand-in server that only listens: the respawn loop needs nothing else, and it starts at once.
LISTENER = """
import socket, sys, time
path = sys.argv[sys.argv.index("--kong-prefix") + 1] + "/" + sys.argv[sys.argv.index("--socket-name") + 1]
sock = socket.socket(socket.AF_UNIX)
try:
    import os; os.unlink(path)
except OSError:
    pass
sock.bind(path); sock.listen()
while True:
    time.sleep(60)
"""


def test_the_server_is_respawned_at_most_once_a_second(plugin_info: PluginInfo) -> None:
    listener = PluginServerProcess(
        [sys.executable, "-c", LISTENER], prefix=short_dir(), socket_name="listener.sock"
    )
    with listener, KongNode(listener, plugin_info, workers=1) as node:
        node.kill_server()
        node.wait_until_up()
        node.kill_server()  # at once: the second start waits for a second after the first
        node.wait_until_up()
        respawner = node.respawner
        assert respawner is not None
    shutil.rmtree(listener.prefix, ignore_errors=True)
    assert len(respawner.starts) == 3 and len(respawner.exits) == 2
    assert respawner.starts[2] - respawner.starts[1] >= 1.0
    assert node.down_windows()[1][1] - node.down_windows()[1][0] >= 0.9


def test_a_config_change_starts_the_new_instance_then_closes_the_old_one_in_every_worker(
    server: PluginServerProcess, plugin_info: PluginInfo, settings: RedisSettings, basic_account: Admin
) -> None:
    with KongNode(server, plugin_info, workers=2, respawn=False) as node:
        configure(node, settings)
        old = node.plugin("route-b")
        for index in range(2):
            send(node, "route-b", index)
        new = node.change("route-b", cost=1)
        for index in range(2):
            outcome = send(node, "route-b", index).outcome
            assert outcome is not None and outcome.instance_calls == [
                "plugin.StartInstance",
                "plugin.CloseInstance",
            ]
            assert outcome.response_headers.get("X-Credit-Cost") == "1"
        for worker in node.workers:
            started = worker.side.started_instances
            assert [s.seq for s in started] == [old.seq, new.seq]
            assert worker.side.closed_instance_ids == [started[0].instance_id]


@pytest.mark.parametrize("kong_version", ["3.4", "3.9"])
def test_after_a_restart_no_worker_runs_a_route_under_another_route_s_configuration(
    server: PluginServerProcess,
    plugin_info: PluginInfo,
    settings: RedisSettings,
    basic_account: Admin,
    kong_version: str,
) -> None:
    """Route A started first in worker 1 (the lower id), B in worker 0. After the restart, worker 0
    meets the error first and starts B again; worker 1 sends A's requests while the reset event is
    still on its way (3.9) or never comes (3.4): each must be refused as A's configuration says."""
    with KongNode(server, plugin_info, workers=2, kong_version=kong_version, event_delay=0.5) as node:
        configure(node, settings)
        assert refused_as_premium(send(node, "route-a", 1))
        assert send(node, "route-b", 0).outcome.proxied  # type: ignore[union-attr]
        node.kill_server()
        node.wait_until_up()
        assert send(node, "route-b", 0).outcome.proxied  # type: ignore[union-attr]
        assert all(refused_as_premium(send(node, "route-a", 1)) for _ in range(3))
        node.settle_events()
        assert refused_as_premium(send(node, "route-a", 1))
        assert send(node, "route-b", 1).outcome.proxied  # type: ignore[union-attr]
    assert basic_account.account(CONSUMER["id"]).balance == 100


@pytest.mark.parametrize("kong_version", KONG_VERSIONS)
def test_an_instance_claim_that_times_out_by_each_release_s_rules(
    server: PluginServerProcess,
    plugin_info: PluginInfo,
    settings: RedisSettings,
    basic_account: Admin,
    kong_version: str,
) -> None:
    """Another request holds the claim on the instance for longer than ``WAIT_TIME``: 3.4 ignores the
    error and sends ``HandleEvent`` with a nil id, which kong-pdk answers "no plugin instance", so the
    instance is started again and the request charged; 3.6+ log it and proxy without the plugin."""
    plugin = gate_config(settings, cost=0, route_id="route-b")
    kong = KongSide(server.socket_path, plugin_info, timeout=10, claim_wait=0.05, kong_version=kong_version)
    with kong:
        kong._instances[plugin.plugin_id] = InstanceInfo(plugin.seq, plugin.plugin_id)  # being started
        if kong_version == "3.4":
            outcome = kong.request(plugin, KongRequest(consumer=CONSUMER))
            assert outcome.proxied and outcome.rpc_methods()[0] == "plugin.HandleEvent"
            assert any("Could not claim" in line for line in outcome.logs("err"))
        else:
            with pytest.raises(KongWouldBypass, match="Could not claim instance_id"):
                kong.request(plugin, KongRequest(consumer=CONSUMER))
