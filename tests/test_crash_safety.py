"""The plugin server killed (SIGKILL) in the middle of a load: no charge lost, none applied twice.

Every request the gate answered "allowed" is charged exactly once. A request in flight when the server
dies gets no answer; Kong then proxies it without the plugin (or, with fail-closed routing, to the
closed destination). Such a request may or may not have been charged, depending on whether its
script ran before the kill: at most one charge per in-flight request, never two, which is what this
test measures.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from creditgate.admin import Admin
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.store.redis_store import RedisStore
from tests.gate_fixtures import MODES, gate_config, start_plugin_server
from tests.kong_harness import KongRequest, KongRpcError, KongSide, KongWouldBypass, PluginInfo

ACCOUNT = {"id": "load", "username": "load", "custom_id": None}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_sigkill_under_load_loses_no_charge_and_applies_none_twice(
    settings: RedisSettings, admin: Admin, store: RedisStore, plugin_info: PluginInfo, mode: str
) -> None:
    admin.apply_plan(Plan("prepaid"))
    admin.subscribe("load", "prepaid", starts_at=admin.now() - 10)
    admin.grant("load", 1_000_000)
    server = start_plugin_server(*MODES[mode])
    kong = KongSide(server.socket_path, plugin_info, timeout=5.0)
    plugin = gate_config(settings, cost=1)
    verdicts: Counter[str] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + 3.0

    def load() -> None:
        while time.monotonic() < stop:
            try:
                outcome = kong.request(plugin, KongRequest(consumer=ACCOUNT))
                verdict = "allowed" if outcome.proxied else "refused"
            except (KongWouldBypass, KongRpcError):
                verdict = "no answer"  # Kong would proxy it without the plugin
            with lock:
                verdicts[verdict] += 1

    workers = [threading.Thread(target=load) for _ in range(8)]
    try:
        for worker in workers:
            worker.start()
        time.sleep(1.0)
        server.kill()
        time.sleep(0.3)
        server.start()  # Kong respawns its plugin server; instances come back on first use
        for worker in workers:
            worker.join()
    finally:
        kong.close()
        server.stop()

    charges = [e for e in store.ledger("load") if e.fields["kind"] == "charge"]
    assert len({e.id for e in charges}) == len(charges)
    assert verdicts["refused"] == 0
    assert verdicts["allowed"] > 100 and verdicts["no answer"] >= 1
    # Every allowed request is charged; each unanswered one at most once.
    assert verdicts["allowed"] <= len(charges) <= verdicts["allowed"] + verdicts["no answer"]
    assert store.account_state("load").balance == 1_000_000 - len(charges)
    print(f"\n{mode}: {dict(verdicts)}, charges {len(charges)}")
