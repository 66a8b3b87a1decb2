"""Self-tests of the harness (tests/harness/) against the real kong-pdk server running sample_plugin."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.harness import (
    Headers,
    KongRequest,
    KongRpcError,
    KongRpcTimeout,
    KongSide,
    KongWouldBypass,
    Outcome,
    PluginConfig,
    PluginInfo,
    PluginServerProcess,
    PluginServerStartError,
    dump,
    fix_mmap,
    lua_roundtrip,
)

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

SAMPLE_ARGV = [sys.executable, str(Path(__file__).with_name("sample_plugin.py"))]
ALICE = {"id": "c-1", "username": "alice", "custom_id": None, "tags": None}


@pytest.fixture(scope="module")
def info() -> PluginInfo:
    return PluginInfo.query(SAMPLE_ARGV)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PluginServerProcess]:
    with PluginServerProcess(SAMPLE_ARGV, prefix=tmp_path, socket_name="sample.sock") as proc:
        yield proc
        print(proc.log_text())  # shown by pytest only when the test failed


@pytest.fixture
def kong(server: PluginServerProcess, info: PluginInfo) -> Iterator[KongSide]:
    with KongSide(server.socket_path, info, timeout=5.0) as side:
        yield side


def allowed() -> KongRequest:
    return KongRequest(method="POST", path="/v1/things", headers={"X-Plan": "pro"}, consumer=ALICE)


def blocked() -> KongRequest:
    return KongRequest(headers={"X-Plan": "blocked"}, consumer=ALICE)


def test_dump_returns_a_list_whose_first_entry_describes_the_plugin(info: PluginInfo) -> None:
    entries = dump(SAMPLE_ARGV)
    assert isinstance(entries, list)
    assert entries[0]["Name"] == "harness-sample"
    assert (info.name, info.priority, info.version) == ("harness-sample", 10, "0.1.0")
    assert set(info.phases) == {"access", "log"}
    names = [next(iter(entry)) for entry in info.config_fields]
    assert names[:4] == ["header_name", "deny_value", "message", "limits"]


def test_start_instance_config_holds_every_schema_field_defaults_nulls_and_kong_keys(kong: KongSide) -> None:
    plugin = PluginConfig(config={"limits": {"window": 60}}, route_id="route-1")
    kong.request(plugin, allowed()).assert_clean()

    (started,) = kong.started_instances
    sent = json.loads(started.config_json)
    assert sent == {
        "header_name": "x-plan",
        "deny_value": "blocked",
        "message": None,
        "limits": {"burst": 5, "window": 60},
        "stall_seconds": 0,
        "call_unknown_method": False,
        "forbidden_call_in_log": False,
        "route_id": "route-1",
        "__plugin_id": plugin.plugin_id,
        "__key__": "plugins:harness-sample:route-1::::00000000-0000-0000-0000-000000000000",
        "__seq__": plugin.seq,
    }
    assert "service_id" not in sent  # nil in Lua: cjson leaves the key out
    assert started.answer["Config"] == sent  # what the plugin's __init__ received


def test_missing_record_is_expanded_and_unknown_field_rejected(kong: KongSide) -> None:
    assert kong.build_config(PluginConfig())["limits"] == {"burst": 5, "window": None}
    with pytest.raises(ValueError, match="unknown field"):
        kong.build_config(PluginConfig(config={"no_such_field": 1}))


def test_allowed_request_is_proxied_with_upstream_header_and_counted_round_trips(kong: KongSide) -> None:
    plugin = PluginConfig()
    outcome = kong.request(plugin, allowed())

    outcome.assert_clean()
    assert outcome.proxied and outcome.status is None and outcome.client_status == 200
    assert outcome.upstream_headers.get("X-Consumer-Username") == "alice"
    assert outcome.methods_in("access") == [
        "kong.client.get_consumer",
        "kong.request.get_header",
        "kong.service.request.set_header",
        "kong.ctx.shared.set",
    ]
    assert outcome.rpc_methods("access") == [
        "plugin.HandleEvent",
        "plugin.StepConsumer",
        "plugin.Step",
        "plugin.Step",
        "plugin.Step",
    ]
    assert outcome.round_trips_by_phase == {"access": 5, "log": 4}
    assert outcome.round_trips == 9
    assert outcome.instance_calls == ["plugin.StartInstance"]

    again = kong.request(plugin, allowed())
    assert again.instance_calls == []  # the instance is cached per plugin id
    assert again.round_trips == 9


def test_exit_records_status_body_headers_and_no_step_follows_it(kong: KongSide) -> None:
    outcome = kong.request(PluginConfig(), blocked())

    outcome.assert_clean()
    assert not outcome.proxied
    assert (outcome.status, outcome.body) == (403, {"message": "denied"})
    assert outcome.headers == {"X-Sample-Reason": "denied"}
    assert outcome.exit_method == "kong.response.exit"
    assert outcome.client_body == b'{"message":"denied"}'
    assert outcome.response_headers.get("content-type") == "application/json; charset=utf-8"
    assert outcome.response_headers.get("x-sample-reason") == "denied"
    assert outcome.methods_in("access")[-1] == "kong.response.exit"
    assert outcome.rpc_methods("access") == ["plugin.HandleEvent", "plugin.StepConsumer", "plugin.Step"]
    # The plugin server removed the event itself when it saw the exit: a Step now is unknown to it.
    with pytest.raises(KongRpcError, match="not found"):
        kong.call("plugin.Step", {"EventId": outcome.event_ids["access"], "Data": None})
    # Like Kong, the log phase still runs after an exit.
    assert outcome.logs("notice") == ["status=403 consumer=-"]


def test_restarted_server_answers_no_plugin_instance_and_the_instance_is_recreated(
    server: PluginServerProcess, kong: KongSide
) -> None:
    plugin = PluginConfig()
    kong.request(plugin, allowed()).assert_clean()
    old_pid = server.pid

    server.restart()
    assert server.pid != old_pid
    outcome = kong.request(plugin, allowed())

    outcome.assert_clean()
    assert outcome.proxied
    assert outcome.rpc_methods("access")[:2] == ["plugin.HandleEvent", "plugin.HandleEvent"]
    assert outcome.instance_calls == ["plugin.StartInstance"]
    assert any("no plugin instance" in line for line in outcome.logs("warn"))
    assert len(kong.started_instances) == 2


def test_config_change_starts_a_new_instance_then_closes_the_old_one(kong: KongSide) -> None:
    plugin = PluginConfig()
    kong.request(plugin, blocked()).assert_clean()
    old_id = kong.cached_instance_id(plugin)

    changed = plugin.changed(message="changed")
    outcome = kong.request(changed, blocked())

    outcome.assert_clean()
    assert outcome.body == {"message": "changed"}
    assert outcome.instance_calls == ["plugin.StartInstance", "plugin.CloseInstance"]
    assert kong.cached_instance_id(changed) != old_id
    assert kong.closed_instance_ids == [old_id]
    with pytest.raises(KongRpcError, match="no plugin instance"):
        kong.call("plugin.CloseInstance", old_id)


def test_log_phase_reads_saved_status_and_ctx_shared(kong: KongSide) -> None:
    outcome = kong.request(PluginConfig(), allowed(), upstream_status=201, upstream_headers={"X-Up": "1"})

    outcome.assert_clean()
    assert outcome.logs("notice") == ["status=201 consumer=c-1"]
    assert outcome.response_headers.get("x-up") == "1"
    assert outcome.methods_in("log") == [
        "kong.response.get_status",
        "kong.ctx.shared.get",
        "kong.log.notice",
    ]


def test_log_phase_call_outside_the_saved_subset_is_an_error_and_never_answered(kong: KongSide) -> None:
    outcome = kong.request(PluginConfig(config={"forbidden_call_in_log": True}), allowed())

    assert outcome.methods_in("log")[-1] == "kong.request.get_path"
    assert len(outcome.errors) == 1 and "kong.request.get_path" in outcome.errors[0]
    # HandleEvent answered get_status, then one Step per answered call: none for get_path.
    assert outcome.rpc_methods("log") == ["plugin.HandleEvent", "plugin.Step", "plugin.Step", "plugin.Step"]
    with pytest.raises(AssertionError, match="no request found"):
        outcome.assert_clean()


def test_unknown_pdk_method_is_answered_nil_and_recorded(kong: KongSide) -> None:
    outcome = kong.request(PluginConfig(config={"call_unknown_method": True}), allowed())

    assert outcome.proxied
    assert outcome.errors == [
        "could not find pdk method: kong.no_such_module.no_such_method (or not simulated by the harness)"
    ]


def test_lua_error_in_a_pdk_call_answers_500_and_leaves_the_event_hanging(kong: KongSide) -> None:
    anonymous_name = KongRequest(headers={"X-Plan": "pro"}, consumer={**ALICE, "username": None})
    outcome = kong.request(PluginConfig(), anonymous_name)  # set_header(name, None): nil in Lua

    assert (outcome.status, outcome.body) == (500, {"message": "An unexpected error occurred"})
    assert not outcome.proxied
    assert outcome.methods_in("access")[-1] == "kong.service.request.set_header"
    assert outcome.rpc_methods("access") == ["plugin.HandleEvent", "plugin.StepConsumer", "plugin.Step"]
    assert any("invalid header value" in error for error in outcome.errors)


def test_fifty_concurrent_requests_from_threads(kong: KongSide) -> None:
    plugin = PluginConfig()

    def one(i: int) -> tuple[int, Outcome]:
        return i, kong.request(plugin, blocked() if i % 3 == 0 else allowed())

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))

    for i, outcome in results:
        outcome.assert_clean()
        if i % 3 == 0:
            assert outcome.status == 403 and not outcome.proxied
        else:
            assert outcome.proxied and outcome.upstream_headers.get("x-consumer-username") == "alice"
            assert outcome.round_trips == 9
    assert len(kong.started_instances) == 1  # concurrent requests wait for the one that starts it


def test_dead_server_raises_kong_would_bypass(server: PluginServerProcess, kong: KongSide) -> None:
    plugin = PluginConfig()
    kong.request(plugin, allowed()).assert_clean()

    server.kill()
    with pytest.raises(KongWouldBypass) as caught:
        kong.request(plugin, blocked())

    assert caught.value.phase == "access"
    assert isinstance(caught.value.cause, KongRpcError)


def test_first_request_to_a_dead_server_gets_500_because_start_instance_fails(
    server: PluginServerProcess, kong: KongSide
) -> None:
    server.kill()
    outcome = kong.request(PluginConfig(), allowed())

    assert (outcome.status, outcome.body) == (500, {"message": "An unexpected error occurred"})
    assert not outcome.proxied
    assert any("starting instance" in error for error in outcome.errors)


def test_stalled_plugin_times_out_into_a_bypass(server: PluginServerProcess, info: PluginInfo) -> None:
    with KongSide(server.socket_path, info, timeout=1.0) as kong, pytest.raises(KongWouldBypass) as caught:
        kong.request(PluginConfig(config={"stall_seconds": 2}), allowed())
    assert isinstance(caught.value.cause, KongRpcTimeout)


def test_server_that_never_listens_fails_loudly_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('boom', flush=True); raise SystemExit(3)"]
    with pytest.raises(PluginServerStartError, match="boom"):
        PluginServerProcess(argv, prefix=tmp_path, socket_name="never.sock", start_timeout=5.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": "1", "flag": True, "many": ["x", "y"]}, {"a": ["1"], "flag": [], "many": ["x", "y"]}),
        ({}, {}),
    ],
)
def test_fix_mmap_matches_kongs_multimap_encoding(value: dict[str, Any], expected: dict[str, Any]) -> None:
    assert fix_mmap(value) == expected


def test_values_coming_back_through_lua_lose_nils_and_empty_maps() -> None:
    assert lua_roundtrip({}) == []
    assert lua_roundtrip({"a": None, "b": 2.0}) == {"b": 2}
    assert lua_roundtrip({"a": None}, keep_null=True) == {"a": None}


def test_headers_are_case_insensitive_multi_maps() -> None:
    headers = Headers([("X-Plan", "a"), ("x-plan", "b"), ("Cookie", "c=1"), ("cookie", "d=2")])
    assert headers.get("X_PLAN") == "a"
    assert headers.joined("x-plan") == "a, b"  # nginx >= 1.23 $http_x_plan
    assert headers.joined("cookie") == "c=1; d=2"
    assert headers.to_lua()["x-plan"] == ["a", "b"]
    headers.set("X-PLAN", "z")
    assert headers.get_all("x-plan") == ["z"]
