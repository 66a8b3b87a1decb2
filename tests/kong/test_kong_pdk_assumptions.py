"""What creditgate.kong.runtime assumes of kong-pdk's internals, one test per assumption.

The plugin server replaces or adjusts five kong-pdk internals (runtime.py). A kong-pdk release that
renames or reshapes one of them would make a patch silently do nothing (a leak back, or instance ids
from 0 again, which lets one route run under another's configuration after a restart): these tests
fail first, naming the assumption, instead of a node.
"""

from __future__ import annotations

import inspect
from importlib import metadata

import gevent
import kong_pdk.listener
import kong_pdk.server
from kong_pdk.logger import Logger

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


def test_the_listener_s_handle_is_the_one_rpc_handler_copies() -> None:
    # rpc_handler answers and logs as this handle does; a handle that changed must be re-read first.
    source = inspect.getsource(kong_pdk.listener.Server.handle)
    for line in (
        "unpacker = msgpack.Unpacker(sockf, strict_map_key=False)",
        "for _, msgid, method, args in unpacker:",
        'ns, cmd = method.split(".")',
        'write_error(fd, msgid, "RPC for %s is not supported" % ns)',
        'cmd_r = cmd[0].lower() + cmdre.sub(lambda m: "%s_%s" % (m.group(1), m.group(2).lower()), cmd[1:])',
        'self.logger.debug("rpc: #%d method: %s args: %s" % (msgid, method, args))',
        "ret = getattr(self.ps, cmd_r)(*args)",
        'self.logger.debug("rpc: #%d return: %s" % (msgid, ret))',
        "write_response(fd, msgid, ret)",
        "except (PluginServerException, PDKException) as ex:",
        'self.logger.warn("rpc: #%d error: %s" % (msgid, str(ex)))',
        'self.logger.error("rpc: #%d exception: %s" % (msgid, traceback.format_exc()))',
    ):
        assert line in source, line
    assert source.count("write_error(fd, msgid, str(ex))") == 2
    assert "msgpack.packb([" in inspect.getsource(kong_pdk.listener.write_response)


def test_a_level_below_debug_silences_debug_lines_by_the_logger_s_dummy() -> None:
    quiet, loud = Logger(), Logger()
    quiet.set_level(Logger.WARNING - 1)  # kong-pdk's cli without -v
    loud.set_level(Logger.WARNING - 2)  # -v
    assert quiet.debug == quiet.dummy and loud.debug != loud.dummy
    assert pdk_runtime._lets_debug_out(loud) and not pdk_runtime._lets_debug_out(quiet)


def test_gevent_has_the_greenlet_tree_setting() -> None:
    assert "track_greenlet_tree" in gevent.config.settings
