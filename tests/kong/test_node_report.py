"""What only a plugin server knows (its breaker, the Redis errors it met) reaches the service's /metrics."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.kong.node_report import INTERVAL_ENV
from creditgate.ops.admin import Admin
from tests.gate_fixtures import MODES, gate_config, start_plugin_server
from tests.harness import KongRequest, KongSide, PluginInfo
from tests.harness.process import PluginServerProcess
from tests.redis_servers import RedisServer, wait_until
from tests.service_support import READ_TOKEN, Running, running_service

ACME = KongRequest(consumer={"id": "acme", "username": "acme", "custom_id": None})


@pytest.fixture
def redis_timeout_ms() -> int:
    return 200


@pytest.fixture(params=sorted(MODES))
def reporting_server(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PluginServerProcess]:
    """A plugin server (each runtime) that writes its report every 0.2 s."""
    monkeypatch.setenv(INTERVAL_ENV, "0.2")
    server = start_plugin_server(*MODES[request.param])
    yield server
    server.stop()
    shutil.rmtree(Path(server.socket_path).parent, ignore_errors=True)


def scrape(api: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = api.call("GET", "/metrics", token=READ_TOKEN).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def node_values(api: Running, name: str, **labels: str) -> list[float]:
    return [
        value
        for (metric, found), value in scrape(api).items()
        if metric == name and all((k, v) in found for k, v in labels.items())
    ]


def test_a_plugin_server_whose_redis_went_away_shows_its_open_breaker_and_errors_then_its_closing(
    reporting_server: PluginServerProcess,
    plugin_info: PluginInfo,
    own_redis: RedisServer,
    own_settings: RedisSettings,
    funded: Admin,
) -> None:
    # The circuit stays open after Redis is back until a request probes it, after the cool-down.
    plugin = gate_config(own_settings, breaker_failures=2, breaker_cooldown_ms=1000)
    with (
        KongSide(reporting_server.socket_path, plugin_info, timeout=10.0) as kong,
        running_service(own_settings) as api,
    ):
        assert kong.request(plugin, ACME).proxied
        wait_until(lambda: node_values(api, "credit_gate_breaker_open") == [0], 10, "the node's report")
        own_redis.stop()
        for _ in range(3):
            assert kong.request(plugin, ACME).status == 503
        own_redis.start()  # back (and empty), but the circuit stays open until a request probes it
        wait_until(lambda: node_values(api, "credit_gate_breaker_open") == [1], 10, "the open breaker")
        errors = sum(node_values(api, "credit_gate_redis_errors_total"))
        assert errors >= 2  # the failures that opened the circuit; the third request never met Redis
        assert node_values(api, "credit_gate_breaker_changes_total") == [1]
        (age,) = node_values(api, "credit_gate_node_report_age_seconds")
        assert 0 <= age < 5
        funded.grant("acme", 1)  # the restarted Redis is empty: re-seed it
        funded.apply_plan(Plan("pro"))
        funded.subscribe("acme", "pro", starts_at=funded.now() - 10)
        time.sleep(1.0)  # the cool-down: the next request probes Redis, which answers
        assert kong.request(plugin, ACME).proxied
        wait_until(lambda: node_values(api, "credit_gate_breaker_open") == [0], 10, "the closed breaker")
        assert node_values(api, "credit_gate_breaker_changes_total") == [3]  # open, half-open, closed


def test_a_plugin_server_that_stopped_drops_out_of_the_scrape(
    reporting_server: PluginServerProcess,
    plugin_info: PluginInfo,
    own_settings: RedisSettings,
    funded: Admin,
) -> None:
    plugin = gate_config(own_settings)
    with running_service(own_settings) as api:
        with KongSide(reporting_server.socket_path, plugin_info, timeout=10.0) as kong:
            assert kong.request(plugin, ACME).proxied
            wait_until(lambda: len(node_values(api, "credit_gate_breaker_open")) == 1, 10, "the report")
        reporting_server.stop()
        # Its report expires after three intervals (at least a second); then the node is gone.
        wait_until(lambda: node_values(api, "credit_gate_breaker_open") == [], 10, "the node to drop out")
        assert node_values(api, "credit_gate_node_report_age_seconds") == []


def test_an_allowed_request_still_costs_one_redis_command_while_the_node_reports(
    reporting_server: PluginServerProcess,
    plugin_info: PluginInfo,
    own_redis: RedisServer,
    own_settings: RedisSettings,
    funded: Admin,
) -> None:
    plugin = gate_config(own_settings)
    counting = own_redis.client()
    with KongSide(reporting_server.socket_path, plugin_info, timeout=10.0) as kong:
        assert kong.request(plugin, ACME).proxied  # connections open, script loaded, reporter started
        before = redis_counters(counting)
        started = time.monotonic()
        for _ in range(100):
            assert kong.request(plugin, ACME).proxied
        elapsed = time.monotonic() - started
        after = redis_counters(counting)
    spent = {name: after[1].get(name, 0) - before[1].get(name, 0) for name in after[1]}
    assert spent["evalsha"] == 100
    # The report: one pipeline (HSET, EXPIRE, SADD) per interval, however many requests there were.
    pipelines = int(elapsed / 0.2) + 2
    assert spent.get("sadd", 0) <= pipelines and spent.get("expire", 0) <= pipelines
    # What Redis read from its clients: the 100 charges, the first INFO, and the report's pipelines.
    assert after[0] - before[0] <= 100 + 1 + pipelines


def redis_counters(client: redis.Redis) -> tuple[int, dict[str, int]]:
    """Requests Redis read, and calls per command (a script's own commands included)."""
    info: dict[str, Any] = client.info("stats", "commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items() if k.startswith("cmdstat_")}
    return int(info["total_reads_processed"]), calls
