"""The protocol's pure part: requests read, instances numbered and answered as kong-pdk 0.36 answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kong_pdk.module import Module
from kong_pdk.server import PluginServer

from creditgate.kong.plugin_server.protocol import (
    ID_SPAN,
    CallError,
    Instances,
    PluginInfo,
    event_target,
    step_value,
)


class Sample:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def access(self, kong: Any) -> None: ...

    def log(self, kong: Any) -> None: ...


SCHEMA = [{"cost": {"type": "integer", "default": 1}}]


def info() -> PluginInfo:
    return PluginInfo.of("sample", Sample, "2.0.0", 5, SCHEMA)


def test_the_plugin_info_is_kong_pdk_s() -> None:
    class Mod:
        Plugin = Sample
        Schema = SCHEMA
        version = "2.0.0"
        priority = 5

    server = PluginServer()
    server.plugins["sample"] = Module("sample", module=Mod)
    assert info().info() == server.get_plugin_info("sample")
    assert info().phases == ("log", "access")


def test_instances_are_numbered_from_a_random_point_exact_in_lua() -> None:
    starts = {Instances(info()).next_id for _ in range(20)}
    assert len(starts) == 20 and all(0 <= start < ID_SPAN <= 2**53 for start in starts)


def test_an_instance_starts_answers_and_closes_as_kong_pdk_s() -> None:
    instances = Instances(info(), first_id=40)
    name, config = instances.parse_start([{"Name": "sample", "Config": json.dumps({"cost": 3})}])
    answer = instances.add(name, config, Sample)
    assert answer["Name"] == "sample" and answer["Id"] == 40 and answer["Config"] == {"cost": 3}
    assert instances.get(40).plugin.config == {"cost": 3}
    status = instances.status()["Plugins"]["sample"]
    assert [i["Id"] for i in status["Instances"]] == [40]
    assert instances.close([40]) == {"Name": "sample", "Id": 40, "Config": {"cost": 3}}
    for gone in (40, 41, "40", None):
        with pytest.raises(CallError, match=r"^no plugin instance #"):  # Kong starts it again on this text
            instances.get(gone)


def test_a_start_for_another_plugin_or_with_a_config_that_is_not_json_is_refused_before_plugin_code() -> None:
    instances = Instances(info())
    with pytest.raises(CallError, match="not initialized"):
        instances.parse_start([{"Name": "other", "Config": "{}"}])
    with pytest.raises(CallError, match="not JSON"):
        instances.parse_start([{"Name": "sample", "Config": "{"}])
    with pytest.raises(CallError, match="takes a map"):
        instances.parse_start(["sample"])


def test_events_and_steps_read_their_maps() -> None:
    assert event_target([{"InstanceId": 3, "EventName": "access"}]) == (3, "access")
    assert step_value([{"EventId": 9, "Data": {"id": "c"}}], False) == (9, ({"id": "c"}, None))
    assert step_value([{"EventId": 9, "Data": "boom"}], True) == (9, (None, "boom"))
    assert step_value([{"EventId": 9}], False) == (9, (None, None))  # Kong's nil: no Data key
    with pytest.raises(CallError):
        step_value([], False)
