"""credit-gate's plugin-server runtime: Kong's protocol driven by gevent's event loop itself.

kong-pdk's server spends most of a request on itself: a greenlet spawned per event, two hub switches
per PDK call through a ``Channel``, gevent's socket wrappers, a debug string per message whatever the
log level, a ``Packer`` per answer (issue figures in bench/README.md). Here:

- each of Kong's connections is a plain non-blocking socket watched by the loop; its bytes go to a
  streaming ``msgpack.Unpacker``, and every message is answered from the loop's own callback;
- answers are packed by ormsgpack, the same MessagePack bytes as msgpack's ``Packer`` at about 60% of
  its cost (a PDK call's answer: 6,100 instructions against 10,000);
- a phase runs in a pooled worker greenlet; a PDK call writes the call to Kong's connection and
  switches to the loop, and the Step that answers it switches straight back: one switch each way;
- gevent stays the loop, patched into the standard library as before, so redis-py and the store's
  pipelined hot path (``store/hot_path.py``) run on it unchanged.

Bounds: a message over ``MAX_MESSAGE`` or that is not a request closes its connection only; at most
``MAX_EVENTS`` events live at once (more are answered with an error); an event Kong has not spoken
about for ``EVENT_BOUND`` seconds (Kong gives up a call after 60) is abandoned: its worker gets
``EventAbandoned`` wherever it waits, and is reused or ends. At most ``IDLE_WORKERS`` idle workers are
kept.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import traceback
from collections.abc import Callable
from time import monotonic
from typing import Any

import msgpack
import ormsgpack
from greenlet import greenlet
from kong_pdk.exception import PDKException

from creditgate.kong.plugin_server import protocol
from creditgate.kong.plugin_server.pdk import kong_object
from creditgate.kong.plugin_server.protocol import (
    REQUEST,
    RESPONSE,
    RET,
    STEP_ERROR,
    STEP_METHODS,
    TERMINAL_METHODS,
    BadMessage,
    CallError,
    Instances,
    PluginInfo,
)

READ_SIZE = 64 * 1024  # bytes one read of a connection takes
READ_BUFFER = 16 * 1024  # a connection's unpacking buffer to start with
MAX_MESSAGE = 32 * 1024 * 1024  # bytes one message may take: a bigger one closes its connection
MAX_EVENTS = 8_192  # live events; Kong runs more without the plugin (an error answer)
EVENT_BOUND = 65.0  # seconds after Kong's last message for an event: Kong has given up its call
IDLE_WORKERS = 256
SWEEP_SECONDS = 1.0
ACCEPT_BURST = 64

RUNNING, WAITING, ENDED, ABANDONED = "running", "waiting", "ended", "abandoned"


def log(message: str) -> None:
    print(f"credit-gate-pluginserver: {message}", file=sys.stderr, flush=True)


_fallback = msgpack.Packer()


def pack(answer: Any) -> bytes:
    """An answer in MessagePack: by ormsgpack (no options: passing one costs more than it saves), or by
    msgpack for what ormsgpack refuses and msgpack takes (a map with integer keys); TypeError when
    neither can carry it."""
    try:
        return ormsgpack.packb(answer)
    except TypeError:
        packed: bytes = _fallback.pack(answer)
        return packed


class EventAbandoned(BaseException):
    """Raised in a phase whose event Kong no longer waits for. A BaseException, as GreenletExit, so that
    a plugin's ``except Exception`` does not take it for a PDK error and carry on."""


class Connection:
    """One of Kong's connections to the server."""

    __slots__ = ("closed", "fed", "out", "readable", "server", "sock", "unpacker", "writable")

    def __init__(self, server: Server, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.server = server
        self.sock = sock
        # A 16 KiB buffer to start (msgpack grows it for a bigger message): msgpack's default is 1 MiB,
        # which the reads fill at a moving offset, page by page: 16 MB resident for 16 connections.
        self.unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, max_buffer_size=MAX_MESSAGE, read_size=READ_BUFFER
        )
        self.fed = 0  # bytes given to the unpacker so far
        self.out = bytearray()
        self.closed = False
        fd = sock.fileno()
        self.readable = server.loop.io(fd, 1)
        self.writable = server.loop.io(fd, 2)
        self.readable.start(self.on_readable)
        server.connections.add(self)

    def on_readable(self) -> None:
        server = self.server
        try:
            size = self.sock.recv_into(server.buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not size:
            self.close()
            return
        handlers = server.handlers
        unpacker = self.unpacker
        try:
            unpacker.feed(server.view[:size])
            self.fed += size
            # Read while bytes are left (an iterator would end each read with StopIteration, a third
            # of a short message's unpacking).
            while unpacker.tell() < self.fed:
                try:
                    message = unpacker.unpack()
                except msgpack.OutOfData:
                    break  # the rest of the message comes with the next read
                if (
                    type(message) is not list
                    or len(message) != 4
                    or message[0] != REQUEST
                    or type(message[1]) is not int
                    or type(message[3]) is not list
                ):
                    raise BadMessage(f"not a request: {str(message)[:80]}")
                handler = handlers.get(message[2])
                try:
                    if handler is None:
                        raise CallError(f"RPC for {message[2]} is not supported")
                    handler(self, message[1], message[3])
                except CallError as error:
                    server.refuse(self, message[1], str(error))
                if self.closed:
                    return
        except Exception as error:  # not msgpack, too big, not a request: this connection only
            log(f"closing a connection that sent what Kong never sends: {type(error).__name__}: {error}")
            self.close()

    def send(self, data: bytes) -> bool:
        """Queue ``data`` for Kong; False when the connection is gone."""
        if self.closed:
            return False
        if self.out:
            self.out += data
            return True
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return False
        if sent < len(data):
            self.out += data[sent:]
            self.writable.start(self.on_writable)
        return True

    def on_writable(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self.out[:sent]
        if not self.out:
            self.writable.stop()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for watcher in (self.readable, self.writable):
            watcher.stop()
            watcher.close()
        self.sock.close()
        self.out.clear()
        self.server.connections.discard(self)


class Event:
    """A phase of one request, from HandleEvent to "ret" (or to kong.response.exit)."""

    __slots__ = ("conn", "deadline", "id", "msgid", "phase", "state", "worker")

    def __init__(self, eid: int, phase: Callable[[Any], Any], conn: Connection, msgid: int) -> None:
        self.id = eid
        self.phase = phase
        self.conn: Connection | None = conn  # where the answer to Kong's last message goes
        self.msgid = msgid
        self.state = RUNNING
        self.deadline = monotonic() + EVENT_BOUND
        self.worker: Worker | None = None


class Worker:
    """A greenlet that runs phases (and instance starts) one after another, parked in between."""

    __slots__ = ("event", "glet", "kong", "server", "to_loop")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.glet = greenlet(self._main, parent=server.hub)
        self.to_loop = server.to_loop
        self.event: Event | None = None
        self.kong = kong_object(self.call_lua_style if server.lua else self.call)

    def _main(self, job: Any) -> None:
        server = self.server
        to_loop = self.to_loop
        while True:
            if isinstance(job, Event):
                self._run(job)
            elif callable(job):
                job()
            if len(server.idle) >= IDLE_WORKERS:
                return  # enough are parked: this greenlet ends
            server.idle.append(self)
            job = to_loop()
            while job is None:  # a stray wake-up: park again
                job = to_loop()

    def _run(self, event: Event) -> None:
        server = self.server
        self.event = event
        try:
            event.phase(self.kong)
        except EventAbandoned:
            pass
        except Exception as error:
            why = f"{type(error).__name__}: {error}"
            log(f"event {event.id}: the phase raised {why}\n{traceback.format_exc()}")
            if event.state is RUNNING and event.conn is not None:
                event.conn.send(pack([RESPONSE, event.msgid, why, None]))
        else:
            if event.state is RUNNING and event.conn is not None:
                answer = {"Data": RET, "EventId": event.id}
                event.conn.send(pack([RESPONSE, event.msgid, None, answer]))
        finally:
            self.event = None
            if event.state is not ABANDONED:
                event.state = ENDED
            server.events.pop(event.id, None)

    def call(self, method: str, *args: Any) -> Any:
        """A PDK call: sent to Kong, then this worker waits for the Step that answers it. Returns the
        value, raises ``PDKException`` on Kong's error (kong-pdk's ``--no-lua-style``); returns None
        at once for ``kong.response.exit`` and ``error``, which Kong answers with no Step."""
        event = self.event
        if event is None or event.state is not RUNNING:
            if event is not None and event.state is ENDED:
                raise CallError(f"{method} after the event ended (kong.response.exit was called)")
            raise EventAbandoned(f"{method}: Kong no longer waits for this event")
        conn = event.conn
        server = self.server
        answer = [
            RESPONSE,
            event.msgid,
            None,
            {"Data": {"Method": method, "Args": args}, "EventId": event.id},
        ]
        try:  # pack(), inline: one Python call fewer per PDK call
            body = ormsgpack.packb(answer)
        except TypeError:
            body = _fallback.pack(answer)  # TypeError for what neither can carry: the plugin's
        if conn is None or not conn.send(body):
            event.state = ABANDONED
            server.events.pop(event.id, None)
            raise EventAbandoned(f"{method}: Kong's connection closed")
        event.conn = None
        if method in TERMINAL_METHODS:
            event.state = ENDED  # Kong sends nothing more for this event
            server.events.pop(event.id, None)
            return None
        event.state = WAITING
        data, error = self.to_loop()  # until the Step
        if error:
            raise PDKException(f"exception from {method}: {error}")
        return data

    def call_lua_style(self, method: str, *args: Any) -> Any:
        """The same, returning ``(value, error)`` (kong-pdk's default, Lua style)."""
        try:
            answer = self.call(method, *args)
        except PDKException as error:
            return None, str(error).removeprefix(f"exception from {method}: ")
        return None if method in TERMINAL_METHODS else (answer, None)


class Server:
    """One plugin's server: its instances, live events and Kong's connections, on gevent's loop."""

    def __init__(self, plugin: PluginInfo, *, lua: bool = False, first_id: int | None = None) -> None:
        from gevent import get_hub
        from gevent.monkey import get_original

        self.plain_socket: type[socket.socket] = get_original("socket", "socket")  # not gevent's wrapper
        self.hub = get_hub()
        self.loop = self.hub.loop
        # Back to the loop from a worker: greenlet's own switch (gevent's Hub.switch adds a switch_out
        # check that only gevent's greenlets use).
        self.to_loop: Callable[[], Any] = greenlet.switch.__get__(self.hub)
        self.plugin = plugin
        self.lua = lua
        self.instances = Instances(plugin, first_id)
        self.events: dict[int, Event] = {}
        self.next_event = secrets.randbelow(protocol.ID_SPAN) if first_id is None else first_id
        self.idle: list[Worker] = []
        self.connections: set[Connection] = set()
        self.buffer = bytearray(READ_SIZE)
        self.view = memoryview(self.buffer)
        handlers: dict[str, Callable[[Connection, int, list[Any]], None]] = {
            "plugin.HandleEvent": self._handle_event,
            "plugin.StartInstance": self._start_instance,
            "plugin.CloseInstance": self._answering(self.instances.close),
            "plugin.GetStatus": self._answering(lambda _args: self.instances.status()),
            "plugin.GetPluginInfo": self._answering(self._plugin_info),
            "plugin.SetPluginDir": self._answering(self._set_plugin_dir),
            STEP_ERROR: self._step_error,
        }
        for name in STEP_METHODS:
            handlers[name] = self._step
        self.handlers = handlers
        self._sweeper = self.loop.timer(SWEEP_SECONDS, SWEEP_SECONDS, ref=False)
        self._sweeper.start(self._sweep)

    # messages (in the loop)

    def _answering(self, answer: Callable[[list[Any]], Any]) -> Callable[[Connection, int, list[Any]], None]:
        def handle(conn: Connection, msgid: int, args: list[Any]) -> None:
            conn.send(pack([RESPONSE, msgid, None, answer(args)]))

        return handle

    def _plugin_info(self, args: list[Any]) -> dict[str, Any]:
        if not args or args[0] != self.plugin.name:
            raise CallError(f"{args[0] if args else None} not initialized")
        return self.plugin.info()

    @staticmethod
    def _set_plugin_dir(args: list[Any]) -> str:
        if not args or not isinstance(args[0], str) or not os.path.exists(args[0]):
            raise CallError(f"{args[0] if args else None} not exists")
        return "ok"

    def _start_instance(self, conn: Connection, msgid: int, args: list[Any]) -> None:
        """The plugin's constructor may block (it may connect somewhere): it runs in a worker."""
        name, config = self.instances.parse_start(args)

        def start() -> None:
            try:
                answer = self.instances.add(name, config, self.plugin.cls)
            except Exception as error:
                conn.send(pack([RESPONSE, msgid, f"{type(error).__name__}: {error}", None]))
                return
            conn.send(pack([RESPONSE, msgid, None, answer]))
            log(f"instance #{answer['Id']} of {name} started")

        self._worker().glet.switch(start)

    def _handle_event(self, conn: Connection, msgid: int, args: list[Any]) -> None:
        iid, phase_name = protocol.event_target(args)
        instance = self.instances.get(iid)
        if phase_name not in self.plugin.phases:
            raise CallError(f"{self.plugin.name} has no phase {phase_name!r}")
        if len(self.events) >= MAX_EVENTS:
            raise CallError(f"{MAX_EVENTS} events in flight: refused")
        eid = self.next_event
        self.next_event = eid + 1
        event = Event(eid, getattr(instance.plugin, phase_name), conn, msgid)
        self.events[eid] = event
        worker = event.worker = self._worker()
        worker.glet.switch(event)

    def _worker(self) -> Worker:
        return self.idle.pop() if self.idle else Worker(self)

    def _step(self, conn: Connection, msgid: int, args: Any, is_error: bool = False) -> None:
        """Kong's answer to the event's PDK call: the waiting worker goes on with it."""
        try:
            step = args[0]
            eid = step["EventId"]
            data = step.get("Data")
        except (IndexError, KeyError, TypeError, AttributeError):
            self.refuse(conn, msgid, f"a Step takes a map with an EventId: {str(args)[:80]}")
            return
        event = self.events.get(eid) if type(eid) is int else None
        if event is None:
            self.refuse(conn, msgid, f"event id {eid} not found")
        elif event.state is not WAITING or event.worker is None:
            self.refuse(conn, msgid, f"event id {eid} is not waiting for a step")
        else:
            event.conn = conn
            event.msgid = msgid
            event.state = RUNNING
            event.deadline = monotonic() + EVENT_BOUND
            event.worker.glet.switch((None, data) if is_error else (data, None))

    def _step_error(self, conn: Connection, msgid: int, args: Any) -> None:
        self._step(conn, msgid, args, True)

    def refuse(self, conn: Connection, msgid: int, why: str) -> None:
        conn.send(pack([RESPONSE, msgid, why, None]))

    # bounds (in the loop)

    def _sweep(self) -> None:
        now = monotonic()
        late = [event for event in self.events.values() if event.deadline <= now]
        for event in late:
            self.events.pop(event.id, None)
            was = event.state
            event.state = ABANDONED
            log(f"event {event.id} abandoned: {was} for {EVENT_BOUND:.0f} s after Kong's last message")
            worker = event.worker
            if worker is not None and worker.event is event and not worker.glet.dead:
                worker.glet.throw(EventAbandoned(f"event {event.id}: Kong gave up waiting"))
        if os.getppid() == 1:  # adopted by init: Kong is gone (kong-pdk's watchdog does the same)
            log("Kong exits, terminating...")
            os._exit(0)

    # connections

    def serve_listener(self, listener: socket.socket) -> None:
        """Accept Kong's connections on ``listener`` until the process ends."""
        listener.setblocking(False)
        watcher = self.loop.io(listener.fileno(), 1)
        resume = self.loop.timer(0.1)

        def accept() -> None:
            for _ in range(ACCEPT_BURST):
                try:
                    fd, _ = listener._accept()  # type: ignore[attr-defined]  # accept() would build gevent's socket
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as error:  # EMFILE and the like: pause accepting, do not spin
                    log(f"accept failed: {error}; pausing 0.1 s")
                    watcher.stop()
                    resume.start(lambda: watcher.start(accept))
                    return
                Connection(self, self.plain_socket(fileno=fd))

        watcher.start(accept)
        self.hub.join()

    def serve_channel(self, channel_fd: int) -> None:
        """Serve the connections the acceptor hands over (``processes.py``) until it goes."""
        channel = self.plain_socket(fileno=channel_fd)
        channel.setblocking(False)
        watcher = self.loop.io(channel_fd, 1)

        def receive() -> None:
            while True:
                try:
                    data, fds, _flags, _addr = socket.recv_fds(channel, 16, 64)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    os._exit(0)
                if not data and not fds:
                    log(f"server process {os.getpid()}: the acceptor is gone, exiting")
                    os._exit(0)
                try:
                    channel.send(b"a" * len(fds))  # the acceptor keeps each until told
                except OSError:
                    os._exit(0)
                for fd in fds:
                    Connection(self, self.plain_socket(fileno=fd))

        watcher.start(receive)
        log(f"server process {os.getpid()} serving connections from the acceptor")
        self.hub.join()
