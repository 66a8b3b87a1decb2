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

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.gate_fixtures import MODES, gate_config, start_plugin_server
from tests.harness import KongRequest, KongRpcError, KongSide, KongWouldBypass, PluginInfo

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
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                outcome = kong.request(plugin, KongRequest(consumer=ACCOUNT))
                if outcome.proxied:
                    verdict = "allowed"
                elif outcome.errors:  # Kong's own 500: the plugin never answered (its server was down)
                    verdict = "no answer"
                else:
                    verdict = "refused"
            except (KongWouldBypass, KongRpcError):
                verdict = "no answer"  # Kong would proxy it without the plugin
            with lock:
                verdicts[verdict] += 1

    def allowed_count() -> int:
        with lock:
            return verdicts["allowed"]

    def until_allowed(count: int) -> None:
        """Phases end on what was served, not on the wall clock: a loaded machine serves less per second."""
        deadline = time.monotonic() + 60
        while allowed_count() < count and time.monotonic() < deadline:
            time.sleep(0.05)

    workers = [threading.Thread(target=load) for _ in range(8)]
    try:
        for worker in workers:
            worker.start()
        until_allowed(60)
        server.kill()
        time.sleep(0.3)
        server.start()  # Kong respawns its plugin server; instances come back on first use
        until_allowed(allowed_count() + 60)
        stop.set()
        for worker in workers:
            worker.join()
    finally:
        stop.set()
        kong.close()
        server.stop()

    charges = [e for e in store.ledger("load") if e.fields["kind"] == "charge"]
    assert len({e.id for e in charges}) == len(charges)
    assert verdicts["refused"] == 0
    assert verdicts["allowed"] >= 120 and verdicts["no answer"] >= 1  # served before and after the kill
    # Every allowed request is charged; each unanswered one at most once.
    assert verdicts["allowed"] <= len(charges) <= verdicts["allowed"] + verdicts["no answer"]
    assert store.account_state("load").balance == 1_000_000 - len(charges)
    print(f"\n{mode}: {dict(verdicts)}, charges {len(charges)}")
