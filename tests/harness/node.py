"""A whole Kong node: several nginx workers in front of one plugin server, as Kong really drives it.

* Every worker is a :class:`~tests.harness.worker.KongSide` with its own instance table and its own LIFO
  pool, and connects from a small process of its own, so that the server sees one peer pid per worker
  (what the multi-process server pins connections by), as it sees one per nginx worker process.
* Requests are spread over the workers in turn (nginx's accept mutex is off by default: any worker
  takes the next connection), and many run at once in each.
* The ``reset_instances`` worker event a worker posts (3.5+) reaches the workers that registered its
  handler after ``event_delay`` seconds (``kong.worker_events`` polls; a loaded node is slower).
* The server is respawned by a :class:`~tests.harness.process.Respawner` (worker 0's ``pluginserver_timer``,
  at most once a second) after :meth:`KongNode.kill_server` kills it.
* :meth:`KongNode.change` is a configuration change: the route's plugin gets a new ``__seq__``; the
  requests already running keep the config they started with, the next ones take the new one, and each
  worker starts the new instance and closes the old one when its first request meets the change.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tests.harness.config import PluginConfig
from tests.harness.pdk import KongRequest, Outcome
from tests.harness.process import PluginInfo, PluginServerProcess, Respawner
from tests.harness.versions import rules_for
from tests.harness.wire import DEFAULT_POOL_SIZE, connect_unix
from tests.harness.worker import KongSide, KongWouldBypass

# A process that only opens connections for its worker and hands them over: the server reads the peer
# pid of a unix connection at connect() (SO_PEERCRED), so each worker looks like an nginx process.
_CONNECTOR = """
import socket, sys
channel = socket.socket(fileno=int(sys.argv[1]))
while True:
    path = channel.recv(4096)
    if not path:
        break
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path.decode())
    except OSError as exc:
        channel.send(b"%d %s" % (exc.errno or 0, str(exc.strerror).encode()))
    else:
        socket.send_fds(channel, [b"ok"], [conn.fileno()])
    conn.close()
"""


class Connector:
    """Opens connections from a process of its own and passes them back (``SCM_RIGHTS``)."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._channel = mine
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _CONNECTOR, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def __call__(self, path: str) -> socket.socket:
        with self._lock:
            self._channel.settimeout(10.0)
            self._channel.send(path.encode())
            message, fds, _flags, _addr = socket.recv_fds(self._channel, 4096, 1)
        if message != b"ok" or not fds:
            for fd in fds:
                os.close(fd)
            errno_text, _, text = message.decode(errors="replace").partition(" ")
            raise OSError(int(errno_text or 0), text or "connector closed")
        return socket.socket(fileno=fds[0])

    def close(self) -> None:
        self._channel.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)


@dataclass
class NodeWorker:
    """One nginx worker of the node."""

    id: int
    side: KongSide
    connector: Connector | None


@dataclass
class NodeResult:
    """What became of one request the node ran.

    ``plugin`` is the config the request carried (its route's, at the time it started); ``outcome`` is
    None when Kong would have proxied it without the plugin (``bypass`` says why). ``started`` and
    ``ended`` are ``time.monotonic()`` stamps.
    """

    route: str
    plugin: PluginConfig
    worker: int
    started: float
    ended: float
    outcome: Outcome | None
    bypass: KongWouldBypass | None

    @property
    def answered(self) -> bool:
        return self.outcome is not None


class KongNode:
    """``workers`` nginx workers of one Kong node, by the rules of ``kong_version``, on ``server``.

    ``respawn`` runs worker 0's respawn loop for the server (on by default). ``own_peers`` connects each
    worker from a process of its own (on by default; off, every worker shares this test's pid).
    """

    def __init__(
        self,
        server: PluginServerProcess,
        plugin_info: PluginInfo,
        *,
        workers: int = 4,
        kong_version: str = "3.9",
        event_delay: float = 0.0,
        pool_size: int = DEFAULT_POOL_SIZE,
        timeout: float = 10.0,
        respawn: bool = True,
        own_peers: bool = True,
    ) -> None:
        if workers < 1:
            raise ValueError("a node has at least one worker")
        self.server = server
        self.rules = rules_for(kong_version)
        self.kong_version = kong_version
        self.event_delay = event_delay
        self.node_id = f"node-{id(self):x}"
        self.workers: list[NodeWorker] = []
        for worker_id in range(workers):
            connector = Connector() if own_peers else None
            side = KongSide(
                server.socket_path,
                plugin_info,
                timeout=timeout,
                node_id=self.node_id,
                kong_version=kong_version,
                pool_size=pool_size,
                worker_id=worker_id,
                post_reset_event=self._post_reset_event,
                connect=connector if connector is not None else connect_unix,
            )
            self.workers.append(NodeWorker(worker_id, side, connector))
        self.respawner = Respawner(server).start() if respawn else None
        self.kills: list[float] = []
        self.events_posted = 0
        self.events_delivered = 0
        self._routes: dict[str, PluginConfig] = {}
        self._lock = threading.Lock()
        self._next_worker = itertools.count()
        self._timers: list[threading.Timer] = []

    # -- configuration ------------------------------------------------------------------------------------

    def configure(self, plugins: Iterable[PluginConfig]) -> None:
        """The node's plugins, one per route (``route_id``; a global plugin under ``"*"``)."""
        with self._lock:
            for plugin in plugins:
                self._routes[plugin.route_id or "*"] = plugin

    def plugin(self, route: str) -> PluginConfig:
        with self._lock:
            return self._routes[route]

    @property
    def routes(self) -> list[str]:
        with self._lock:
            return list(self._routes)

    def change(self, route: str, **updates: Any) -> PluginConfig:
        """An Admin API / declarative update of the route's plugin: a new ``__seq__``."""
        with self._lock:
            changed = self._routes[route].changed(**updates)
            self._routes[route] = changed
            return changed

    # -- requests -----------------------------------------------------------------------------------------

    def request(self, route: str, request: KongRequest, *, worker: int | None = None) -> NodeResult:
        """Run one request on the next worker (or on ``worker``) with the route's config of now."""
        plugin = self.plugin(route)
        index = next(self._next_worker) % len(self.workers) if worker is None else worker
        side = self.workers[index].side
        started = time.monotonic()
        try:
            outcome: Outcome | None = side.request(plugin, request)
            bypass = None
        except KongWouldBypass as exc:
            outcome, bypass = None, exc
        return NodeResult(route, plugin, index, started, time.monotonic(), outcome, bypass)

    # -- the server ---------------------------------------------------------------------------------------

    def kill_server(self) -> None:
        """SIGKILL the plugin server, as a crash or the OOM killer would; worker 0 respawns it."""
        self.kills.append(time.monotonic())
        self.server.kill()

    def wait_until_up(self, timeout: float = 15.0) -> None:
        """Wait until the respawned server accepts connections (a test's pause, not Kong's)."""
        deadline = time.monotonic() + timeout
        while not (self.server.running() and self.server.accepts()):
            if time.monotonic() > deadline:
                errors = self.respawner.errors if self.respawner is not None else []
                raise TimeoutError(f"the plugin server did not come back {errors}\n{self.server.log_text()}")
            time.sleep(0.01)

    def down_windows(self) -> list[tuple[float, float]]:
        """``(kill, socket accepting again)`` for every kill: when a request could meet no server."""
        if self.respawner is None:
            return [(kill, float("inf")) for kill in self.kills]
        exits, ups = self.respawner.exits, self.respawner.ups
        windows = []
        for kill in self.kills:
            # The server came back with the first start after the exit that followed the kill (an up
            # seen between the stamp and the signal belongs to the server that was killed).
            exited = next((e for e in exits if e >= kill), float("inf"))
            windows.append((kill, next((u for u in ups if u > exited), float("inf"))))
        return windows

    def met_a_kill(self, result: NodeResult) -> bool:
        """True when the request was in flight at a kill or ran while the server was down."""
        return any(result.started < up and result.ended >= kill for kill, up in self.down_windows())

    # -- worker events ------------------------------------------------------------------------------------

    def _post_reset_event(self, origin: KongSide) -> None:
        """``kong.worker_events.post("plugin_server", "reset_instances", ...)``: every worker that
        registered the handler (the poster too) applies it ``event_delay`` seconds later."""
        receivers: Sequence[NodeWorker]
        if self.rules.reset_event_receivers == "every worker":
            receivers = self.workers
        elif self.rules.reset_event_receivers == "worker 0":
            receivers = self.workers[:1]
        else:
            receivers = []
        with self._lock:
            self.events_posted += 1
            for receiver in receivers:
                timer = threading.Timer(self.event_delay, self._deliver, (receiver.side,))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()

    def _deliver(self, side: KongSide) -> None:
        side.reset_instances()
        with self._lock:
            self.events_delivered += 1

    def settle_events(self, timeout: float = 10.0) -> None:
        """Wait until every posted event has reached its workers."""
        with self._lock:
            timers = list(self._timers)
        for timer in timers:
            timer.join(timeout)

    # -- lifetime -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop respawning, drop pending events, close every worker's pool and connector."""
        if self.respawner is not None:
            self.respawner.stop()
        with self._lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        for worker in self.workers:
            worker.side.close()
            if worker.connector is not None:
                worker.connector.close()

    def __enter__(self) -> KongNode:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
