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
- kong-pdk's listener spends, per request, more on its own bookkeeping than on the plugin (measured
  with callgrind): two debug strings formatted for every message even when debug lines are dropped,
  the handler's name re-derived from the method name (``split``, a regex and a lambda), a new msgpack
  ``Packer`` for every answer, and gevent's greenlet-tree tracking on every spawn.
  ``install_lean_dispatch`` replaces ``Server.handle`` with one that answers byte for byte the same
  without that work, and turns the tracking off.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgpack

from creditgate.kong import processes

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


METHOD_NAMES_KEPT = 64  # Kong's plugin protocol has a dozen methods; a peer sending more is not cached

# kong-pdk's texts (listener.py), %-formatted as there: the same text for every value (%d takes a float).
NOT_SUPPORTED = "RPC for %s is not supported"
SNAKE = "%s_%s"
LOG_CALL = "rpc: #%d method: %s args: %s"
LOG_RETURN = "rpc: #%d return: %s"
LOG_ERROR = "rpc: #%d error: %s"
LOG_EXCEPTION = "rpc: #%d exception: %s"

# A method name's handler on kong-pdk's PluginServer, or the error answered instead (another namespace).
Dispatch = tuple[str | None, str | None]


def _dispatch_of(method: Any) -> Dispatch:
    """kong-pdk's own mapping (``listener.Server.handle``), raising what it raises on a malformed name."""
    from kong_pdk.listener import cmdre

    ns, cmd = method.split(".")
    if ns != "plugin":
        return None, NOT_SUPPORTED % ns
    return cmd[0].lower() + cmdre.sub(lambda m: SNAKE % (m.group(1), m.group(2).lower()), cmd[1:]), None


def _lets_debug_out(logger: Any) -> bool:
    """kong-pdk's ``Logger.set_level`` silences a level by replacing its method with ``dummy``."""
    return bool(logger.debug != getattr(logger, "dummy", None))


def rpc_handler() -> Callable[..., None]:
    """kong-pdk's ``listener.Server.handle`` (0.36), minus work that changes nothing it sends or logs.

    - The two debug lines are formatted only when the logger lets debug lines out (read once per
      connection: kong-pdk sets the level when the server starts).
    - Each method name is mapped to its handler once, for every connection; a malformed name (no dot,
      two dots, not a string) is not cached and raises where kong-pdk's raises, ending the connection.
    - One ``Packer`` per connection: a connection is served by one greenlet or one thread, and a
      ``Packer`` that fails to pack a value empties itself, as a fresh one would be.
    The reader is still the listener module's ``msgpack.Unpacker``, so ``install_small_read_buffers``
    applies; the error paths log and answer as kong-pdk's do.
    """
    from kong_pdk import listener
    from kong_pdk.exception import PDKException, PluginServerException

    dispatch: dict[str, Dispatch] = {}

    def handle(self: Any, fd: Any, address: Any, *_: Any) -> None:
        ps, logger, debug = self.ps, self.logger, _lets_debug_out(self.logger)
        pack, send = msgpack.Packer().pack, fd.send
        unpacker = listener.msgpack.Unpacker(listener.WrapSocket(fd), strict_map_key=False)
        for _, msgid, method, args in unpacker:
            try:
                name, refusal = dispatch[method]
            except (KeyError, TypeError):  # new, or unhashable (then not a str: kong-pdk's error)
                name, refusal = _dispatch_of(method)
                if len(dispatch) < METHOD_NAMES_KEPT:
                    dispatch[method] = name, refusal
            if refusal is not None:
                send(pack([1, msgid, refusal, None]))
                continue
            try:
                if debug:
                    logger.debug(LOG_CALL % (msgid, method, args))
                ret = getattr(ps, cast(str, name))(*args)
                if debug:
                    logger.debug(LOG_RETURN % (msgid, ret))
                send(pack([1, msgid, None, ret]))
            except (PluginServerException, PDKException) as ex:
                logger.warn(LOG_ERROR % (msgid, str(ex)))
                send(pack([1, msgid, str(ex), None]))
            except Exception as ex:
                logger.error(LOG_EXCEPTION % (msgid, traceback.format_exc()))
                send(pack([1, msgid, str(ex), None]))

    handle._credit_gate_rpc_handler = True  # type: ignore[attr-defined]
    return handle


def install_lean_dispatch() -> None:
    """Install ``rpc_handler`` on kong-pdk's listener, and stop gevent recording who spawned whom.

    gevent records, for every greenlet spawned (one per event with ``-g``), its parent, the parent's
    spawn-tree locals and the spawning stack, for debugging tools this server never runs. The setting
    is read at each spawn; it is set here, before kong-pdk's server starts gevent's hub.
    """
    import gevent
    import kong_pdk.listener

    gevent.config.track_greenlet_tree = False
    server_class = cast(Any, kong_pdk.listener).Server
    if not getattr(server_class.handle, "_credit_gate_rpc_handler", False):
        server_class.handle = rpc_handler()


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


# -- where kong-pdk's dedicated server takes its connections (processes.py) ----------------------------


def serve_from_channel(channel_fd: int) -> None:
    """Make kong-pdk's dedicated server take its connections from the acceptor's channel.

    kong-pdk's ``start_dedicated_server`` builds ``kong_pdk.cli.UnixStreamServer`` and calls its
    ``serve_forever``, which binds the socket; this swaps in a subclass whose ``serve_forever`` reads
    connections from ``channel_fd`` and runs kong-pdk's own ``handle`` on each, as its listener would
    (a greenlet each with ``-g``, a thread each otherwise). It returns when the channel closes: the
    acceptor is gone, and Kong will start a whole new server.
    """
    import kong_pdk.cli
    from kong_pdk.listener import UnixStreamServer

    processes.die_with_the_acceptor()

    class ChannelServer(UnixStreamServer):  # type: ignore[misc]  # kong-pdk is untyped
        def serve_forever(self) -> None:
            # kong-pdk numbers events from 0 in every process: start elsewhere, so that a Step meant
            # for an event of a process that died cannot land in an event of this one.
            self.ps.event_id = secrets.randbelow(ID_SPAN)
            channel = socket.socket(fileno=channel_fd)
            spawn = self._spawner()
            self.logger.info(f"server process {os.getpid()} serving connections from the acceptor")
            while True:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(channel, 16, 64)
                except InterruptedError:
                    continue
                except OSError:
                    os._exit(0)
                if not data and not fds:
                    # The acceptor is gone: go at once, connections and all, as a single server
                    # killed would; Kong respawns the whole server.
                    self.logger.info(f"server process {os.getpid()}: the acceptor is gone, exiting")
                    os._exit(0)
                try:
                    # The acceptor keeps its copy of a connection until told, so that one sent to a
                    # process that dies before reading it is served by the replacement instead.
                    channel.send(b"a" * len(fds))
                except OSError:
                    os._exit(0)  # the acceptor is gone
                for fd in fds:
                    spawn(fd)

        def _spawner(self) -> Callable[[int], None]:
            if self.use_gevent:
                from gevent import spawn as gspawn

                return lambda fd: gspawn(self._serve, fd)

            import threading

            def start_thread(fd: int) -> None:
                threading.Thread(target=self._serve, args=(fd,), daemon=True).start()

            return start_thread

        def _serve(self, fd: int) -> None:
            conn = socket.socket(fileno=fd)
            try:
                self.handle(conn, None)
            except Exception as error:  # a reset connection or garbage on it: this connection only
                self.logger.debug(f"connection ended: {type(error).__name__}: {error}")
            finally:
                conn.close()

    kong_pdk.cli.UnixStreamServer = ChannelServer


def serve_from_listener(listener: socket.socket) -> None:
    """Make kong-pdk's dedicated server serve ``listener`` (``listen_early``) instead of binding its own.

    kong-pdk's ``UnixStreamServer.serve_forever`` (``kong_pdk/listener.py``) binds the socket, starts
    its watchdog (which ends the server once Kong is gone) and serves; this subclass does the same on
    the socket already listening: a gevent ``StreamServer`` with ``-g``, a thread per connection
    otherwise.
    """
    import kong_pdk.cli
    from kong_pdk import listener as pdk_listener

    class ListeningServer(pdk_listener.UnixStreamServer):  # type: ignore[misc]  # kong-pdk is untyped
        def serve_forever(self) -> None:
            if self.use_gevent:
                from gevent import sleep, spawn
                from gevent import socket as gevent_socket
                from gevent.server import StreamServer

                self.logger.info("server (gevent) started at path " + self.path)
                spawn(pdk_listener.watchdog, sleep, self.logger)
                StreamServer(gevent_socket.socket(fileno=listener.detach()), self.handle).serve_forever()
                return
            import threading

            self.logger.info("server started at path " + self.path)
            threading.Thread(
                target=pdk_listener.watchdog, args=(time.sleep, self.logger), daemon=True
            ).start()
            server = pdk_listener.tUnixStreamServer(self.path, self.handle, bind_and_activate=False)
            server.socket.close()
            server.socket = listener
            server.serve_forever()

    kong_pdk.cli.UnixStreamServer = ListeningServer
