"""Concurrent requests from one account, through several plugin server processes, never overspend."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.gate_fixtures import MODES, gate_config, start_plugin_server
from tests.harness import KongRequest, KongSide, PluginInfo

ACCOUNT = {"id": "racer", "username": "racer", "custom_id": None}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_two_plugin_servers_and_100_concurrent_requests_spend_exactly_the_balance(
    settings: RedisSettings, admin: Admin, store: RedisStore, plugin_info: PluginInfo, mode: str
) -> None:
    admin.apply_plan(Plan("prepaid", allowance=0, prepaid=True))
    admin.subscribe("racer", "prepaid", starts_at=admin.now() - 10)
    admin.grant("racer", 40)
    servers = [start_plugin_server(*MODES[mode]), start_plugin_server(*MODES[mode])]
    sides = [KongSide(server.socket_path, plugin_info, timeout=10.0) for server in servers]
    plugin = gate_config(settings, cost=1)
    try:
        with ThreadPoolExecutor(max_workers=100) as pool:
            outcomes = list(
                pool.map(lambda i: sides[i % 2].request(plugin, KongRequest(consumer=ACCOUNT)), range(100))
            )
    finally:
        for side in sides:
            side.close()
        for server in servers:
            server.stop()

    verdicts = Counter("allowed" if o.proxied else json.loads(o.body)["reason"] for o in outcomes)
    assert verdicts == {"allowed": 40, "insufficient_credit": 60}
    assert store.account_state("racer").balance == 0
    charges = [e for e in store.ledger("racer") if e.fields["kind"] == "charge"]
    assert len(charges) == 40
