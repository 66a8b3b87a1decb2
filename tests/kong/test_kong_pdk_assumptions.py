"""What creditgate.kong.runtime assumes of kong-pdk's internals, one test per assumption.

The plugin server replaces or adjusts four kong-pdk internals (pdk_runtime.py). A kong-pdk release that
renames or reshapes one of them would make a patch silently do nothing (a leak back, or instance ids
from 0 again, which lets one route run under another's configuration after a restart): these tests
fail first, naming the assumption, instead of a node.
"""

from __future__ import annotations

import inspect
from importlib import metadata

import kong_pdk.listener
import kong_pdk.server

from creditgate.kong import runtime as pdk_runtime


def test_kong_pdk_is_the_release_the_patches_were_written_for() -> None:
    assert metadata.version("kong-pdk") == "0.36", "re-check every patch in pdk_runtime.py, then this pin"


def test_the_event_runner_is_the_module_level_function_handle_event_calls() -> None:
    assert callable(kong_pdk.server._handler_event_func)
    # handle_event is wrapped by kong-pdk's lock decorator: read the module's text.
    source = inspect.getsource(kong_pdk.server)
    assert source.count("_handler_event_func") >= 2, "handle_event no longer runs the module's event runner"


def test_the_listener_reads_through_the_module_s_msgpack_unpacker() -> None:
    assert kong_pdk.listener.msgpack.Unpacker is not None
    assert "msgpack.Unpacker(" in inspect.getsource(kong_pdk.listener), "the listener's reader changed"


def test_instances_and_events_are_numbered_from_the_server_s_counters() -> None:
    # start_instance and handle_event are wrapped by kong-pdk's lock decorator: read the module's text.
    assert "iid = self.instance_id" in inspect.getsource(kong_pdk.server)
    assert "eid = self.event_id" in inspect.getsource(kong_pdk.server)


def test_a_server_numbers_from_a_random_point_below_2_to_the_53() -> None:
    pdk_runtime.install_unique_ids()
    pdk_runtime.install_unique_ids()  # idempotent: one wrapper, not two
    starts = set()
    for _ in range(4):
        server = kong_pdk.server.PluginServer()
        assert 0 <= server.instance_id < pdk_runtime.ID_SPAN <= 2**53 - 2**40
        assert 0 <= server.event_id < pdk_runtime.ID_SPAN
        starts.add(server.instance_id)
    assert len(starts) == 4
