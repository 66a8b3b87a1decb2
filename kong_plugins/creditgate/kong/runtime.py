"""How the plugin server runs: kong-pdk's concurrency mode, and a fix for one of its leaks.

- gevent mode (``-g``): kong-pdk runs each event in a greenlet but does not monkey-patch, so a
  blocking Redis call would stop every other request of the server while it waits. We patch the
  standard library before anything else is imported, so that redis-py's socket I/O yields.
- kong-pdk 0.36 ends each event by putting "ret" on the event's channel. After
  ``kong.response.exit`` Kong sends nothing more and kong-pdk has dropped the event, so in gevent
  mode (an unbuffered channel) that put blocks forever: one greenlet and its frames leaked per
  refused request (the family of kong-python-pdk issue #59). ``install_exit_fix`` replaces the event
  runner with one that does not send "ret" after a terminal call, which the phase reports.
- kong-pdk reads each of Kong's connections through a msgpack ``Unpacker`` with msgpack's default
  buffer of 1 MiB, which it fills at a moving offset: each connection's buffer becomes resident page
  by page, and the server's RSS climbed about 17 MB over its first 100,000 requests before levelling
  off, gate or no gate. ``install_small_read_buffers`` gives the listener 16 KiB buffers (msgpack
  grows one for a bigger message).
- kong-pdk numbers plugin instances (and events) from 0 in every process, and Kong never learns that
  a server restarted: a worker keeps the old ids, and after a restart a stale id could name a fresh
  instance of ANOTHER plugin entry (another route's configuration, its cost and plans). Kong 3.4
  re-creates only the failing entry, 3.5+ every entry of the worker but the other workers later
  (kong/runloop/plugin_servers/plugin.lua). ``install_unique_ids`` starts each server process's
  numbering at a random point below 2^52 (Kong's Lua numbers are doubles, exact to 2^53), so the
  ids of one process never meet those of an earlier process or of a sibling: a stale id is always
  "no plugin instance", and Kong re-creates that entry with its own configuration.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgpack

GEVENT_FLAGS = frozenset({"-g", "--gevent"})
PROCESS_FLAGS = frozenset({"-m", "--multiprocessing"})


def wants_gevent(argv: Sequence[str]) -> bool:
    return any(flag in GEVENT_FLAGS for flag in argv)


def wants_processes(argv: Sequence[str]) -> bool:
    return any(flag in PROCESS_FLAGS for flag in argv)


def patch_for_gevent() -> None:
    """Make blocking I/O cooperative. Must run before redis-py, ssl or threading are used.

    gevent tells its plugins about each step of ``patch_all`` through entry points, and looks them
    up anew for each of its 25 events (``gevent/events.py``, ``notify_and_call_entry_points``): 25
    reads of every installed package's metadata, about half of the plugin server's start-up CPU
    (the time Kong waits for its first instance after a respawn). The lookup is done once here and
    gevent's subscribers and plugins are called exactly as gevent would call them.
    """
    from gevent import events, monkey

    look_up_each_time = events.notify_and_call_entry_points
    events.notify_and_call_entry_points = _entry_points_read_once(events.notify)
    try:
        monkey.patch_all()
    finally:
        events.notify_and_call_entry_points = look_up_each_time


def _entry_points_read_once(notify: Callable[[Any], None]) -> Callable[[Any], None]:
    """gevent's ``notify_and_call_entry_points`` (Python 3.10+), over one reading of the entry points."""
    from importlib import metadata

    installed = metadata.entry_points()

    def notify_and_call_entry_points(event: Any) -> None:
        notify(event)
        for plugin in installed.select(group=event.ENTRY_POINT_NAME):
            plugin.load()(event)

    return notify_and_call_entry_points


def event_runner() -> Callable[[Callable[[Any], Any], Any, bool], None]:
    """kong-pdk's event runner, minus the "ret" that nobody reads after an exit.

    The plugin's phases return True when they called ``kong.response.exit`` (or tried to): Kong
    expects nothing more for that event. Told by the phase rather than by watching every message on
    the channel, which would cost a Python call per PDK call. kong-pdk's names are looked up once,
    here, not on every event.
    """
    from kong_pdk.pdk import Kong
    from kong_pdk.server import MSG_RET

    def run_event(phase: Callable[[Any], Any], channel: Any, lua_style: bool) -> None:
        if phase(Kong(channel, lua_style).kong) is not True:
            channel.put(MSG_RET)

    return run_event


READ_BUFFER_BYTES = 16 * 1024


class _SmallBufferMsgpack:
    """msgpack as kong-pdk's listener uses it (``packb``, ``Unpacker``), with small read buffers."""

    packb = staticmethod(msgpack.packb)

    @staticmethod
    def Unpacker(file_like: Any, **options: Any) -> Any:  # msgpack's name, as the listener calls it
        return msgpack.Unpacker(file_like, read_size=READ_BUFFER_BYTES, **options)


def install_small_read_buffers() -> None:
    import kong_pdk.listener

    cast(Any, kong_pdk.listener).msgpack = _SmallBufferMsgpack


def install_exit_fix() -> None:
    import kong_pdk.server

    kong_pdk.server._handler_event_func = event_runner()


ID_SPAN = 2**52  # a random start below this, counted up by one: always below 2^53


def install_unique_ids() -> None:
    """Start every ``PluginServer``'s instance and event numbering at a random point (see above)."""
    import kong_pdk.server

    server_class = cast(Any, kong_pdk.server).PluginServer
    original_init = server_class.__init__
    if getattr(original_init, "_credit_gate_unique_ids", False):
        return

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.instance_id = secrets.randbelow(ID_SPAN)
        self.event_id = secrets.randbelow(ID_SPAN)

    __init__._credit_gate_unique_ids = True  # type: ignore[attr-defined]
    server_class.__init__ = __init__
