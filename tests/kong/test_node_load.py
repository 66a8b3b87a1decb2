"""A whole Kong node under load: several nginx workers, the server killed and respawned, configurations
changed while requests are in flight, by Kong 3.4's and 3.9's rules, on 1 and 2 server processes.

Every configuration has a cost of its own, so that a request charged under any configuration but the one
it carried shows in its answer and in the ledger: route A is sold in plan ``pro`` (5, then 7, then 9),
route B in any plan (1, 2, 3), route C only in ``enterprise`` (always refused to the ``pro`` account).
Whatever happens, every request is answered under its own configuration, except those in flight at a
kill (or sent while the server was down), which Kong proxies without the plugin and which the
deployment's fail-closed route catches; and the ledger holds every charge and replays to the balance.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.ops.admin import Admin
from tests.gate_fixtures import MODES, gate_config, serving
from tests.harness import KongNode, KongRequest, NodeResult, PluginInfo, PluginServerProcess

ACCOUNT: dict[str, Any] = {"id": "acme", "username": "acme", "custom_id": None}
COSTS = {"route-a": [5, 7, 9], "route-b": [1, 2, 3], "route-c": [11, 13, 15]}
PLANS = {"route-a": ["pro"], "route-b": [], "route-c": ["enterprise"]}
GAP = 0.3  # seconds of load between two actions
IN_FLIGHT = 12  # clients
PAUSE = 0.02  # seconds a client waits between two requests: a dead server fails requests fast
WORKERS = 3


@pytest.fixture(
    scope="module",
    params=[(runtime, processes) for runtime in sorted(MODES) for processes in ("1", "2")],
    ids=lambda param: f"{param[0]}-{param[1]}-process",
)
def server(request: pytest.FixtureRequest) -> Iterator[PluginServerProcess]:
    """Shared by both Kong releases' runs: the first run leaves it respawned and serving."""
    runtime, processes = request.param
    yield from serving(*MODES[runtime], "--processes", processes)


@pytest.fixture
def pro_account(admin: Admin) -> Admin:
    admin.apply_plan(Plan("pro", prepaid=True))
    admin.subscribe(ACCOUNT["id"], "pro", starts_at=admin.now() - 60)
    admin.grant(ACCOUNT["id"], 1_000_000)
    return admin


def cost_of(result: NodeResult) -> int:
    cost: int = result.plugin.config["cost"]
    return cost


def failed_at_start(result: NodeResult) -> bool:
    """Answered 500 by Kong because the instance could not be started (a Lua error in Kong)."""
    outcome = result.outcome
    return (
        outcome is not None
        and outcome.status == 500
        and bool(outcome.errors)
        and all(e.startswith("starting instance:") for e in outcome.errors)
    )


def check_answer(result: NodeResult) -> str | None:
    """Why the answer is not the one its own configuration gives, or None when it is."""
    outcome = result.outcome
    assert outcome is not None
    if outcome.errors:
        return f"Kong would log errors: {outcome.errors}"
    if result.route == "route-c":
        if outcome.status != 402 or json.loads(outcome.body)["reason"] != "plan_not_entitled":
            return f"route C answered {outcome.status} {outcome.body!r}"
        return None
    if not outcome.proxied:
        return f"{result.route} answered {outcome.status} {outcome.body!r}"
    charged = outcome.response_headers.get("X-Credit-Cost")
    if charged != str(cost_of(result)):
        return f"{result.route} carried cost {cost_of(result)} and was charged {charged}"
    return None


def run_load(node: KongNode, actions: list[tuple[bool, Callable[[], None]]]) -> list[NodeResult]:
    """``IN_FLIGHT`` clients, each sending a request (cycling over the routes) every ``PAUSE`` seconds
    at most, while ``actions`` run one after the other: ``(True, action)`` runs ``GAP`` seconds after
    the node answered again since the last kill (a respawned server takes a while to start its first
    instances), ``(False, action)`` at once."""
    results: list[NodeResult] = []
    lock = threading.Lock()
    stop = threading.Event()
    routes = sorted(COSTS)

    def client(n: int) -> None:
        i = n
        while not stop.is_set():
            result = node.request(routes[i % len(routes)], KongRequest(path="/v1/x", consumer=ACCOUNT))
            with lock:
                results.append(result)
            i += 1
            stop.wait(PAUSE)

    def answered_since(since: float, route: str | None = None) -> bool:
        with lock:
            return any(
                r.started > since
                and r.answered
                and not failed_at_start(r)
                and (route is None or r.plugin == node.plugin(route))
                for r in results
            )

    def serving_again(routes: list[str | None]) -> None:
        since = node.kills[-1] if node.kills else 0.0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(answered_since(since, r) for r in routes):
            time.sleep(0.01)
        time.sleep(GAP)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(IN_FLIGHT)]
    for thread in clients:
        thread.start()
    try:
        for wait, action in actions:
            if wait:
                serving_again([None])
            action()
        serving_again(list(routes))  # until every route's last configuration has been served
    finally:
        stop.set()
        for thread in clients:
            thread.join(30)
    return results


@pytest.mark.parametrize("kong_version", ["3.4", "3.9"])
def test_under_load_kills_and_config_changes_every_request_is_charged_under_its_own_configuration(
    server: PluginServerProcess,
    plugin_info: PluginInfo,
    settings: RedisSettings,
    pro_account: Admin,
    kong_version: str,
) -> None:
    before = pro_account.account(ACCOUNT["id"]).balance
    versions = dict.fromkeys(COSTS, 0)

    def change(route: str) -> Callable[[], None]:
        def apply() -> None:
            versions[route] += 1
            node.change(route, cost=COSTS[route][versions[route]])

        return apply

    with KongNode(server, plugin_info, workers=WORKERS, kong_version=kong_version, event_delay=0.2) as node:
        node.configure(
            gate_config(settings, cost=COSTS[route][0], plans=PLANS[route], route_id=route) for route in COSTS
        )
        results = run_load(
            node,
            [
                (True, change("route-a")),
                (True, change("route-b")),
                (True, node.kill_server),
                (False, change("route-c")),  # while the server is down
                (True, change("route-a")),
                (False, change("route-b")),
            ],
        )
        node.wait_until_up()
        node.settle_events()
        # After it all, every worker answers every route under the route's configuration of now.
        after = [
            node.request(route, KongRequest(consumer=ACCOUNT), worker=w) for route in COSTS for w in range(3)
        ]

    assert len(node.kills) == 1 and len(node.respawner.starts if node.respawner else []) == 2
    assert [check_answer(r) for r in after] == [None] * len(after)
    assert {r.route: cost_of(r) for r in after} == {"route-a": 9, "route-b": 3, "route-c": 13}

    # A request that met a dead server was proxied without the plugin (Kong's bypass, when its event
    # was cut) or answered 500 (a Lua error when its instance could not start): never charged either way.
    answered = [r for r in results if r.answered and not failed_at_start(r)]
    refused_500 = [r for r in results if r.answered and failed_at_start(r)]
    lost = [r for r in results if not r.answered]
    wrong = [why for why in map(check_answer, answered) if why is not None]
    assert wrong == [], wrong[:5]
    assert all(node.met_a_kill(r) for r in lost + refused_500), [
        str(r.bypass or r.outcome) for r in lost + refused_500 if not node.met_a_kill(r)
    ]
    assert all(r.outcome and not r.outcome.upstream_headers for r in refused_500)
    last_up = node.down_windows()[-1][1]
    assert any(r.started > last_up for r in answered)  # the load ran on after the last respawn
    assert {cost_of(r) for r in answered if r.route != "route-c"} == {5, 7, 9, 1, 2, 3}  # all served

    # The ledger holds every charge, each under the route and cost of the request that made it; a
    # charge without an answer belongs to a request lost at a kill.
    ledger = {
        entry.id: (entry.fields["route"], int(entry.fields["cost"]))
        for entry in pro_account.ledger_entries(accounts=[ACCOUNT["id"]])
        if entry.fields.get("kind") == "charge"
    }
    paid = [r for r in answered + [r for r in after] if r.route != "route-c"]
    for result in paid:
        assert result.outcome is not None
        charge_id = result.outcome.upstream_headers.get("X-Credit-Charge-Id")
        assert ledger.pop(str(charge_id), None) == (f"route:{result.route}", cost_of(result))
    unanswered = Counter((f"route:{r.route}", cost_of(r)) for r in lost if r.route != "route-c")
    assert not Counter(ledger.values()) - unanswered, ledger
    charged = sum(cost_of(r) for r in paid) + sum(cost for _, cost in ledger.values())
    assert before - pro_account.account(ACCOUNT["id"]).balance == charged
    assert pro_account.verify_ledger(ACCOUNT["id"]).ok
    print(
        f"\nKong {kong_version}, {server.argv[server.argv.index('--processes') + 1]} process(es): "
        f"{len(results)} requests, {len(answered)} answered under their configuration, "
        f"{len(refused_500)} answered 500 and {len(lost)} proxied without the plugin at the kill, "
        f"{len(ledger)} charged without an answer, {node.events_posted} reset events"
    )
