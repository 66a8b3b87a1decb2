"""Fail-closed, the part that runs in the plugin: only an allowed request is routed to the paid upstream.

kong.yml's own credit-gate entries run in the real plugin server, driven through Kong's protocol, against
the demo data in a real Redis. Where Kong then sends the request is modelled by :func:`destination`, from
what the plugin did (``kong.service.set_upstream``) and kong.yml: the upstream the plugin chose, or else the
service's own host, which is what Kong uses for a request it ran without the plugin.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import redis

from creditgate.core.config import RedisSettings
from tests.deploy.test_demo import run_seed
from tests.deploy.test_kong_yml import GATE, consumer_id, kong_yml
from tests.gate_fixtures import through_gate
from tests.harness import (
    KongRequest,
    KongSide,
    KongWouldBypass,
    Outcome,
    PluginInfo,
    PluginServerProcess,
)
from tests.redis_servers import RedisServer


def destination(route: str, outcome: Outcome | None) -> str:
    """Where Kong proxies a request to ``route`` after the access phase.

    ``outcome`` None: Kong ran the request without the plugin (server down, hung or erroring).
    """
    _, service = kong_yml().route(route)
    if outcome is not None and outcome.status is not None:
        return f"answered {outcome.status} by Kong for the plugin"
    if outcome is not None and outcome.upstream_name:
        upstream = kong_yml().upstream(outcome.upstream_name)
        assert upstream is not None, f"Kong: could not find an Upstream named {outcome.upstream_name!r}"
        return " ".join(t["target"] for t in upstream["targets"])
    host = str(service["host"])
    dead_end = [r for r, _ in kong_yml().routes() if host in (r.get("hosts") or [])]
    assert dead_end, f"a bypassed request would go to {host}"
    terminate = next(p for p in kong_yml().plugins("request-termination") if p.route == dead_end[0]["name"])
    return f"answered {terminate.config['status_code']} by route {dead_end[0]['name']}"


API = "httpbin:8080"


def consumer(username: str | None) -> dict[str, Any] | None:
    if username is None:
        return None
    return {"id": consumer_id(username), "username": username, "custom_id": None}


def send(
    kong: KongSide, settings: RedisSettings, route: str, username: str | None, redis_port: int | None = None
) -> Outcome:
    entry = kong_yml().plugin_for(GATE, route, username)
    assert entry is not None
    plugin = entry.plugin_config(settings.host, redis_port or settings.port)
    request = KongRequest(path=f"/{route}/get", consumer=consumer(username))
    return through_gate(kong, plugin, request, clean=False)


@pytest.fixture(scope="module")
def demo_keys(redis_server: RedisServer) -> dict[bytes, tuple[bytes, int]]:
    """Every key deploy/demo/seed.sh writes, as DUMP and time to live: the script (three CLI processes)
    runs once for the module, and each test gets what it wrote restored."""
    with redis_server.client() as client:
        client.flushall()
        run_seed(RedisSettings(host="127.0.0.1", port=redis_server.port))
        keys = {key: (client.dump(key), max(client.pttl(key), 0)) for key in client.scan_iter(count=1000)}
    assert keys
    return keys


@pytest.fixture
def demo(
    settings: RedisSettings, redis_client: redis.Redis, demo_keys: dict[bytes, tuple[bytes, int]]
) -> RedisSettings:
    """The session's Redis (emptied by ``settings``) holding the demo's data."""
    for key, (dumped, ttl_ms) in demo_keys.items():
        redis_client.restore(key, ttl_ms, dumped)
    return settings


def test_an_allowed_request_is_routed_to_the_api_by_the_plugin(kong: KongSide, demo: RedisSettings) -> None:
    outcome = send(kong, demo, "basic", "alice")
    outcome.assert_clean()
    assert outcome.proxied and outcome.upstream_name == "demo-api-paid"
    assert outcome.methods.count("kong.service.set_upstream") == 1
    assert destination("basic", outcome) == API


def test_a_consumers_own_entry_routes_to_the_api_too(kong: KongSide, demo: RedisSettings) -> None:
    outcome = send(kong, demo, "premium", "bob")
    assert outcome.response_headers.get("X-Credit-Cost") == "2"
    assert destination("premium", outcome) == API


def test_refused_requests_are_never_routed(kong: KongSide, demo: RedisSettings) -> None:
    refused = {
        "not entitled": send(kong, demo, "premium", "alice"),
        "unauthenticated": send(kong, demo, "basic", None),
        "store down": send(kong, demo, "basic", "alice", redis_port=1),
    }
    for _ in range(9):  # 5 allowance + 3 prepaid pay 8, then insufficient credit
        last = send(kong, demo, "basic", "alice")
    refused["no credit"] = last
    statuses = {name: (o.status, json.loads(o.body)["reason"]) for name, o in refused.items()}
    assert statuses == {
        "not entitled": (402, "plan_not_entitled"),
        "unauthenticated": (401, "unauthenticated"),
        "store down": (503, "store_unavailable"),
        "no credit": (402, "insufficient_credit"),
    }
    for outcome in refused.values():
        assert not outcome.proxied and outcome.upstream_name is None
        assert "kong.service.set_upstream" not in outcome.methods


def test_a_request_kong_runs_without_a_dead_plugin_server_lands_on_the_refusal(
    kong: KongSide, demo: RedisSettings, plugin_server: PluginServerProcess
) -> None:
    assert destination("basic", send(kong, demo, "basic", "alice")) == API
    plugin_server.kill()
    with pytest.raises(KongWouldBypass):
        send(kong, demo, "basic", "alice")
    assert destination("basic", None) == "answered 503 by route credit-gate-unavailable"
    plugin_server.start()


def test_a_request_kong_runs_without_a_hung_plugin_server_lands_on_the_refusal(
    plugin_server: PluginServerProcess, plugin_info: PluginInfo, demo: RedisSettings
) -> None:
    pid = plugin_server.pid
    assert pid is not None
    with KongSide(plugin_server.socket_path, plugin_info, timeout=1.0) as impatient:
        send(impatient, demo, "basic", "alice")  # the instance is started while the server answers
        # Every process of the server hangs: the acceptor and its server processes.
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        hung = [pid, *map(int, children)]
        for each in hung:
            os.kill(each, signal.SIGSTOP)
        try:
            with pytest.raises(KongWouldBypass):
                send(impatient, demo, "basic", "alice")
        finally:
            for each in hung:
                os.kill(each, signal.SIGCONT)
    assert destination("basic", None) == "answered 503 by route credit-gate-unavailable"


def test_when_kong_cannot_start_an_instance_it_answers_500_itself(
    plugin_server: PluginServerProcess, plugin_info: PluginInfo, demo: RedisSettings
) -> None:
    """StartInstance failing is a Lua error in Kong's access phase: Kong answers 500, nothing is proxied."""
    unknown = PluginInfo(
        name="credit-gate-missing",
        priority=plugin_info.priority,
        version=plugin_info.version,
        phases=plugin_info.phases,
        schema=plugin_info.schema,
    )
    with KongSide(plugin_server.socket_path, unknown, timeout=5.0) as kong:
        outcome = send(kong, demo, "basic", "alice")
    assert outcome.status == 500 and not outcome.proxied and outcome.upstream_name is None
