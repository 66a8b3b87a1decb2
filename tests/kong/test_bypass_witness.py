"""A plugin server killed between the charge and Kong's next message: with ``bypass_witness`` on, every
charge belongs to a request Kong served through the gate, or is given back.

Kong's side is the suite's harness (several workers, the server SIGKILLed under load and respawned, by
Kong 3.4's and 3.9's rules). A request Kong proxied without the plugin goes where its upstream says:
the paid upstream when the gate had already called ``set_upstream`` (served, charged), else the service's
host, the fail-closed dead end. The dead end is played here as kong.yml sets it up: its ``http-log``
posts the request (with the headers the first hop sent on, the gate's mark among them) to a real
``credit-gate serve``, which voids the marked charge. Then the ledger must hold exactly the served
requests' charges, net of the charges given back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from creditgate.core import witness
from creditgate.core.config import RedisSettings
from creditgate.core.policy import ChargeRequest
from creditgate.errors import StoreTimeout
from creditgate.ops.admin import Admin
from tests.gate_fixtures import gate_config, through_gate
from tests.harness import KongNode, KongRequest, KongSide, NodeResult, PluginInfo, PluginServerProcess
from tests.kong import test_node_load
from tests.kong.test_node_load import ACCOUNT, run_load
from tests.service_support import ADMIN_TOKEN, READ_TOKEN, Running, running_service

# The whole-node tests' fixtures: their servers (1 and 2 processes) and their funded account.
server = test_node_load.server
pro_account = test_node_load.pro_account
COST = 5
WITNESS_TOKEN = "witness-token-0123456789abcdef"
KILLS = 10


@pytest.fixture
def api(settings: RedisSettings) -> Iterator[Running]:
    environ = {
        "CREDIT_GATE_ADMIN_TOKENS": ADMIN_TOKEN,
        "CREDIT_GATE_READ_TOKENS": READ_TOKEN,
        "CREDIT_GATE_WITNESS_TOKENS": WITNESS_TOKEN,
    }
    with running_service(settings, environ) as running:
        yield running


def dead_end_log(result: NodeResult) -> dict[str, Any]:
    """What http-log on the dead-end route posts for a request: Kong's serializer lower-cases the
    request's header names; the headers are those the first hop sent on (the gate's mark among them)."""
    assert result.bypass is not None
    headers = result.bypass.outcome.upstream_headers
    return {
        "request": {"headers": {name.lower(): headers.get(name) for name in headers}},
        "response": {"status": 503},
    }


def dead_end(headers: dict[str, str], status: int = 503) -> dict[str, Any]:
    """A log entry of the dead-end route, as http-log posts it."""
    return {"request": {"headers": headers}, "response": {"status": status}}


def served(result: NodeResult) -> bool:
    """Proxied to the paid upstream: allowed by the gate, or cut after the gate's set_upstream."""
    if result.outcome is not None:
        return result.outcome.proxied and result.outcome.upstream_name == "paid-api"
    assert result.bypass is not None
    return result.bypass.outcome.upstream_name == "paid-api"


# The mark, on the plain values


def test_a_mark_reads_back_as_its_account_and_token() -> None:
    value = witness.mark("team {a}:b/ü", "0123456789abcdef")
    assert witness.read_mark(value) == ("team {a}:b/ü", "0123456789abcdef")
    assert witness.read_mark([value, value]) == ("team {a}:b/ü", "0123456789abcdef")


@pytest.mark.parametrize(
    "value",
    ["", None, 5, "0123456789abcdef", "0123456789ABCDEF acme", "xyz acme", "0123456789abcdef a b",
     ["0123456789abcdef a", "0123456789abcdef b"], "0123456789abcdef %ff", "0123456789abcdef " + "a" * 5000],
)  # fmt: skip
def test_anything_but_a_mark_is_no_mark(value: object) -> None:
    assert witness.read_mark(value) is None


# The gate's PDK exchange


def test_the_gate_marks_before_charging_and_sets_the_headers_before_the_upstream(
    kong: KongSide, settings: RedisSettings, pro_account: Admin
) -> None:
    gate = gate_config(settings, cost=COST, upstream="paid-api", bypass_witness=True)
    allowed = through_gate(kong, gate, KongRequest(consumer=ACCOUNT))
    calls = allowed.methods_in("access")
    mark_at = calls.index("kong.service.request.set_header")
    assert calls.index("kong.service.set_upstream") > mark_at
    assert allowed.pdk_calls[mark_at].args[0] == witness.HEADER
    account, token = witness.read_mark(allowed.pdk_calls[mark_at].args[1]) or ("", "")
    assert account == "acme" and len(token) == 16
    # The X-Credit-* headers before the upstream: a server that dies between the two leaves the request
    # on its way to the dead end (its mark reported), never to the API without its headers.
    assert calls.index("kong.service.request.set_headers") < calls.index("kong.service.set_upstream")
    assert allowed.upstream_headers.get("X-Credit-Charge-Id")
    assert calls[-1] == "kong.service.request.clear_header"  # last: the API never sees the token
    assert witness.HEADER not in allowed.upstream_headers
    assert allowed.proxied and allowed.upstream_name == "paid-api"
    refused = through_gate(
        kong, gate_config(settings, cost=10**9, bypass_witness=True), KongRequest(consumer=ACCOUNT)
    )
    assert refused.status == 402


def test_without_the_witness_nothing_is_marked(
    kong: KongSide, settings: RedisSettings, pro_account: Admin
) -> None:
    outcome = through_gate(kong, gate_config(settings, cost=COST), KongRequest(consumer=ACCOUNT))
    assert "kong.service.request.set_header" not in outcome.methods_in("access")
    assert witness.HEADER not in outcome.upstream_headers


# The reports


def test_a_report_gives_back_the_marked_charge_once_and_refuses_other_tokens(
    api: Running, pro_account: Admin
) -> None:
    store = pro_account.store
    before = pro_account.account("acme").balance
    charged = store.charge(ChargeRequest("acme", COST, token="00000000000000aa"))
    assert charged.allowed and pro_account.account("acme").balance == before - COST
    report = [dead_end({"x-credit-gate-witness": witness.mark("acme", "00000000000000aa")})]
    for token, status in ((None, 401), (READ_TOKEN, 403)):
        assert api.call("POST", "/v1/kong/bypassed", token=token, json=report).status_code == status
    first = api.call("POST", "/v1/kong/bypassed", token=WITNESS_TOKEN, json=report).json()
    assert first == {"entries": 1, "unmarked": 0, "outcomes": {"given_back": 1}}
    again = api.call("POST", "/v1/kong/bypassed", token=WITNESS_TOKEN, json=report[0]).json()
    assert again["outcomes"] == {"already": 1} or again["outcomes"].get("given_back", 0) == 0
    assert pro_account.account("acme").balance == before
    # A mark whose charge has not run yet: voided, and the charge never runs.
    ahead = [dead_end({"x-credit-gate-witness": witness.mark("acme", "00000000000000bb")})]
    assert api.call("POST", "/v1/kong/bypassed", token=WITNESS_TOKEN, json=ahead).json()["outcomes"] == {
        "voided": 1
    }
    with pytest.raises(StoreTimeout):  # what a voided token answers: nothing charged
        store.charge(ChargeRequest("acme", COST, token="00000000000000bb"))
    assert pro_account.account("acme").balance == before
    # Blank marks (requests the gate let through) and logs without one change nothing.
    blank = [dead_end({"x-credit-gate-witness": ""}), {"request": {}}, "junk"]
    answer = api.call("POST", "/v1/kong/bypassed", token=WITNESS_TOKEN, json=blank).json()
    assert answer == {"entries": 3, "unmarked": 3, "outcomes": {}}
    # A marked request the dead end did not answer (ip-restriction's 403 to a client that called the
    # dead-end route itself, with a mark it made up or saw): nothing is given back.
    forged = dead_end({"x-credit-gate-witness": witness.mark("acme", "00000000000000ff")}, status=403)
    assert store.charge(ChargeRequest("acme", COST, token="00000000000000ff")).allowed
    answer = api.call("POST", "/v1/kong/bypassed", token=WITNESS_TOKEN, json=[forged]).json()
    assert answer == {"entries": 1, "unmarked": 1, "outcomes": {}}
    assert pro_account.account("acme").balance == before - COST
    assert pro_account.verify_ledger("acme").ok


# The whole node, the server killed under load


@pytest.mark.parametrize("kong_version", ["3.4", "3.9"])
def test_kills_under_load_leave_every_charge_served_or_given_back(
    server: PluginServerProcess,
    plugin_info: PluginInfo,
    settings: RedisSettings,
    pro_account: Admin,
    api: Running,
    kong_version: str,
) -> None:
    before = pro_account.account("acme").balance
    with KongNode(server, plugin_info, workers=3, kong_version=kong_version, event_delay=0.2) as node:
        node.configure(
            [gate_config(settings, cost=COST, upstream="paid-api", bypass_witness=True, route_id=route)
             for route in ("route-a", "route-b", "route-c")]
        )  # fmt: skip
        results = run_load(node, [(True, node.kill_server)] * KILLS)
        node.wait_until_up()
    dead_ended = [r for r in results if r.bypass is not None and not served(r)]
    outcomes: Counter[str] = Counter()
    logs = [dead_end_log(r) for r in dead_ended]
    for start in range(0, len(logs), 500):  # http-log's batches (queue.max_batch_size)
        reported = api.call("POST", "/v1/kong/bypassed", token=WITNESS_TOKEN, json=logs[start : start + 500])
        assert reported.status_code == 200, reported.text
        outcomes.update(reported.json()["outcomes"])
    paid = [r for r in results if served(r)]
    charged = before - pro_account.account("acme").balance
    assert charged == COST * len(paid), (charged, len(paid), outcomes, len(dead_ended))
    assert pro_account.verify_ledger("acme").ok
    assert len(node.kills) == KILLS
    print(
        f"\nKong {kong_version}: {len(results)} requests, {len(paid)} served, {len(dead_ended)} at the dead "
        f"end, {outcomes.get('given_back', 0)} charges given back, {outcomes.get('voided', 0)} voided ahead"
    )


def test_the_same_request_charged_again_is_a_replay_whose_token_gives_the_charge_back(
    api: Running, pro_account: Admin
) -> None:
    """Kong runs an event again on a respawned server (after "no plugin instance"), with the same
    request id and a new token: it answers with the first charge, charged once; voiding the new token
    (its request then reached the dead end) gives that one charge back."""
    store = pro_account.store
    before = pro_account.account("acme").balance
    request_id = "0123456789abcdef" * 2
    first = store.charge(ChargeRequest("acme", COST, token="00000000000000cc", request_id=request_id))
    again = store.charge(ChargeRequest("acme", COST, token="00000000000000dd", request_id=request_id))
    assert first.allowed and again.allowed and again.replayed and again.charge_id == first.charge_id
    assert pro_account.account("acme").balance == before - COST
    other = store.charge(ChargeRequest("acme", COST, token="00000000000000ee", request_id="f" * 32))
    assert other.allowed and not other.replayed  # another request: charged
    report = [dead_end({"x-credit-gate-witness": witness.mark("acme", "00000000000000dd")})]
    answer = api.call("POST", "/v1/kong/bypassed", token=WITNESS_TOKEN, json=report).json()
    assert answer["outcomes"] == {"given_back": 1}
    assert pro_account.account("acme").balance == before - COST  # only the other request's charge stands
    assert witness.request_id_of(request_id) == request_id
    assert witness.request_id_of("not-an-id") == "" and witness.request_id_of(None) == ""
