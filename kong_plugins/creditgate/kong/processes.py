"""Several plugin-server processes behind the one socket Kong knows, so that a node's metered traffic can
use every core it has.

Kong's side (``kong/runloop/plugin_servers/plugin.lua``, ``rpc/mp_rpc.lua``): every nginx worker keeps its
own table of instance ids and its own keepalive pool to the socket, and sends the later messages of an
event on whichever pooled connection of that worker is free. So every connection of one nginx worker
must reach the same process, and for the life of that worker, not of a connection: a worker may close
all its connections between two requests and still hold its instance ids.

How: the process Kong starts is an *acceptor*. It binds the socket, starts ``processes`` server
processes (each today's single-process server, ``--processes 1``, reading connections from a
``SOCK_SEQPACKET`` channel instead of a socket of its own), reads each accepted connection's peer pid
(``SO_PEERCRED``), pins that pid to the least-loaded server process the first time it connects and hands
the connection over with ``SCM_RIGHTS`` (``socket.send_fds``). A pin lasts until the peer process exits
(a pidfd tells), however many connections come and go.

When a server process dies the acceptor says so on stderr and starts a new one in its place, at most
once a second; the pids pinned to it stay pinned to its replacement, whose instance table is empty, so
the next event of those nginx workers is answered "no plugin instance" and Kong starts its instances
again (instance ids are unique across processes and restarts, so a stale id names nothing). Connections
that arrive meanwhile wait in the acceptor, never on another process. The replacement numbers its
events from a random start, so that a Step of a request that was in flight in the dead process cannot
reach another request's event. If the acceptor dies, its server processes see their channel close and
exit, and Kong respawns the whole server.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROCESSES_FLAG = "--processes"
CHANNEL_FLAG = "--serve-from-fd"
RUNTIME_FLAG = "--runtime"
RUNTIMES = ("credit-gate", "kong-pdk")  # the first is the default (kong/plugin_server/)
PLUGIN_NAME = "credit-gate"
# Flags that make kong-pdk print and exit: answered by one process, as today.
ONE_SHOT_FLAGS = frozenset({"--dump", "-dump", "-h", "--help", "--version", "-version"})

RESTART_INTERVAL = 1.0  # seconds between two starts of one server process, as Kong's process.lua
STOP_TIMEOUT = 5.0  # seconds the server processes get to exit after SIGTERM before SIGKILL
MAX_WAITING = 4096  # connections held while their server process restarts; more are closed
USAGE_ERROR = 2  # the status argparse (and main()'s own refusals) exit with
LISTEN_QUEUE = 4096  # kong-pdk's default --listen-queue-size
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def log(message: str) -> None:
    """One line on stderr, which Kong's process.lua copies into its error log."""
    print(f"credit-gate-pluginserver: {message}", file=sys.stderr, flush=True)


# -- the command line ------------------------------------------------------------------------------------


def cgroup_cpu_limit(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """Whole CPUs a cgroup v2 quota allows (``docker --cpus``), or None without a quota.

    The affinity mask does not show a quota: a container limited to 2 CPUs on a 64-core host sees 64.
    """
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def default_processes() -> int:
    """One server process per core this process may run on, within the cgroup's CPU quota."""
    cores = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit is not None else cores)


@dataclass(frozen=True)
class Flags:
    """The flags this module reads, and the rest of the command line for kong-pdk."""

    processes: int
    channel_fd: int | None
    rest: list[str]
    runtime: str = RUNTIMES[0]


def split_flags(argv: Sequence[str], default: Callable[[], int] = default_processes) -> Flags:
    """Take ``--processes N``, ``--runtime NAME`` and ``--serve-from-fd FD`` out of ``argv``;
    ``ValueError`` on bad values."""
    processes: int | None = None
    channel: int | None = None
    runtime = RUNTIMES[0]
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name, _, inline = arg.partition("=")
        if name in (PROCESSES_FLAG, CHANNEL_FLAG, RUNTIME_FLAG):
            if inline:
                text = inline
            elif i + 1 < len(args):
                i += 1
                text = args[i]
            else:
                raise ValueError(f"{name} needs a value")
            if name == RUNTIME_FLAG:
                if text not in RUNTIMES:
                    raise ValueError(f"{RUNTIME_FLAG} is one of {', '.join(RUNTIMES)}, got {text!r}")
                runtime = text
                i += 1
                continue
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"{name} takes an integer, got {text!r}") from None
            if name == PROCESSES_FLAG:
                if not 1 <= value <= 256:
                    raise ValueError(f"{PROCESSES_FLAG} must be between 1 and 256, got {value}")
                processes = value
            else:
                channel = value
        else:
            rest.append(arg)
        i += 1
    return Flags(processes if processes is not None else default(), channel, rest, runtime)


def _socket_flags(argv: Sequence[str]) -> argparse.Namespace:
    """kong-pdk's flags that say where and how its dedicated server listens (``kong_pdk/cli.py``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-p", "--kong-prefix", "-kong-prefix", dest="prefix", default="/usr/local/kong/")
    parser.add_argument("--socket-name", dest="socket_name", default=f"{PLUGIN_NAME}.sock")
    parser.add_argument("--listen-queue-size", dest="listen_queue_size", type=int, default=LISTEN_QUEUE)
    known, _ = parser.parse_known_args(list(argv))
    return known


def unknown_flags(argv: Sequence[str]) -> list[str]:
    """The arguments that neither kong-pdk's dedicated server (``kong_pdk/cli.py``, abbreviations as
    argparse takes them) nor this plugin (``--log-phase``) takes: told before anything starts, not
    as whatever a process behind the acceptor fails on first."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-p", "--kong-prefix", "-kong-prefix")
    parser.add_argument("-v", "--verbose", action="count")
    parser.add_argument("--version", "-version", action="store_true")
    parser.add_argument("--socket-name")
    parser.add_argument("--listen-queue-size")
    parser.add_argument("--no-lua-style", action="store_true")
    parser.add_argument("-m", "--multiprocessing", action="store_true")
    parser.add_argument("-g", "--gevent", action="store_true")
    parser.add_argument("--dump", "-dump", action="store_true")
    # --log-phase is taken out by its exact name (credit_gate.py), never abbreviated.
    _, unknown = parser.parse_known_args([arg for arg in argv if arg != "--log-phase"])
    return unknown


def socket_path(argv: Sequence[str]) -> str:
    """Where kong-pdk's dedicated server would listen: ``--kong-prefix`` / ``--socket-name``."""
    known = _socket_flags(argv)
    return str(os.path.join(known.prefix, known.socket_name))


def bind_listener(path: str, backlog: int = LISTEN_QUEUE) -> socket.socket:
    """A unix socket listening on ``path``, in place of a dead server's socket file, as kong-pdk's
    listener does; ``OSError`` if it cannot."""
    if os.path.exists(path):
        os.remove(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(backlog)
    except OSError:
        listener.close()
        raise
    return listener


# -- the acceptor ----------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Slot:
    """One server process and what is pinned to it; the process may be replaced, the slot stays."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    channel: socket.socket | None = None
    started_at: float = -math.inf
    restart_at: float | None = 0.0  # when to (re)start it; None while it runs
    waiting: deque[int] = field(default_factory=deque)  # connection fds held for it
    sent: deque[int] = field(default_factory=deque)  # sent, kept until the process says it has them
    pids: set[int] = field(default_factory=set)


class Acceptor:
    """Accepts Kong's connections and hands each to the server process its nginx worker is pinned to."""

    def __init__(
        self, processes: int, server_argv: Sequence[str], path: str, runtime: str = RUNTIMES[0]
    ) -> None:
        self.server_argv = list(server_argv)
        self.runtime = runtime
        self.path = path
        self.slots = [_Slot(i) for i in range(processes)]
        self.pins: dict[int, _Slot] = {}
        self.pidfds: dict[int, int] = {}  # pidfd -> pid
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.exit_status = 0
        self.listener: socket.socket | None = None
        self._accept_paused_until = 0.0
        self._wake_r, self._wake_w = socket.socketpair()

    # life cycle

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT or until Kong (our parent) is gone; returns the exit status."""
        try:
            self.listener = self._listen()
        except OSError as error:
            log(f"cannot listen on {self.path}: {error}")
            return 1
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop_signal)
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        log(f"acceptor listening on {self.path} for {len(self.slots)} server processes")
        try:
            while not self.stopping:
                self._turn()
        finally:
            self._shutdown()
        return self.exit_status

    def _on_stop_signal(self, _signum: int, _frame: Any) -> None:
        self.stopping = True

    def _listen(self) -> socket.socket:
        listener = bind_listener(self.path)
        listener.setblocking(False)
        return listener

    def _turn(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)
        if self.listener is not None and self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        due = [s.restart_at for s in self.slots if s.restart_at is not None]
        if self._accept_paused_until:
            due.append(self._accept_paused_until)
        timeout = max(0.0, min([now + 1.0, *due]) - now)
        for key, events in self.selector.select(timeout):
            try:
                self._ready(key.data, events)
            except Exception as error:  # never let one connection or process stop the acceptor
                log(f"acceptor: {type(error).__name__}: {error}")
        if os.getppid() == 1:  # adopted by init: Kong is gone (kong-pdk's watchdog does the same)
            log("Kong exits, terminating...")
            self.stopping = True

    def _ready(self, what: Any, events: int) -> None:
        if what == "wake":
            try:
                while self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
        elif what == "listener":
            self._accept()
        elif isinstance(what, _Slot):
            if events & selectors.EVENT_READ:
                self._channel_readable(what)
            if events & selectors.EVENT_WRITE and what.channel is not None:
                self._flush(what)
        elif isinstance(what, int):
            self._peer_exited(what)

    # server processes

    def _start(self, slot: _Slot) -> None:
        slot.restart_at = None
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [
            sys.executable,
            "-m",
            "credit_gate",
            *self.server_argv,
            RUNTIME_FLAG,
            self.runtime,
            PROCESSES_FLAG,
            "1",
            CHANNEL_FLAG,
            str(theirs.fileno()),
        ]
        try:
            slot.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        except OSError as error:
            mine.close()
            log(f"server process {slot.index} could not start ({error}); trying again in a second")
            slot.restart_at = time.monotonic() + RESTART_INTERVAL
            return
        finally:
            theirs.close()
        slot.started_at = time.monotonic()
        mine.setblocking(False)
        slot.channel = mine
        self.selector.register(mine, selectors.EVENT_READ, slot)
        self._flush(slot)

    def _channel_readable(self, slot: _Slot) -> None:
        """A server process writes one byte per connection it received; EOF means it exited."""
        while slot.channel is not None:
            try:
                acks = slot.channel.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                acks = b""
            if not acks:
                self._lost(slot)
                return
            for _ in range(min(len(acks), len(slot.sent))):
                os.close(slot.sent.popleft())

    def _lost(self, slot: _Slot) -> None:
        if slot.channel is not None:
            self.selector.unregister(slot.channel)
            slot.channel.close()
            slot.channel = None
        # Sent but never received (a process that dies leaves them in its channel, or had not read
        # them yet): nothing has read from them, so the replacement serves them from their start.
        while slot.sent:
            slot.waiting.appendleft(slot.sent.pop())
        process, slot.process = slot.process, None
        status = _reap(process)
        slot.restart_at = max(time.monotonic(), slot.started_at + RESTART_INTERVAL)
        if process is not None and process.returncode == USAGE_ERROR and not self.stopping:
            # Its command line was refused (argparse, or a flag the plugin cannot run with): starting
            # it again cannot help, so stop, as a single process would, and let Kong's log show why.
            log(f"server process {slot.index} refused its command line ({status}); stopping")
            self.stopping = True
            self.exit_status = USAGE_ERROR
        if not self.stopping:
            log(
                f"server process {slot.index} exited ({status}); starting a new one, whose instance "
                f"table is empty: Kong re-creates the instances of the {len(slot.pids)} nginx worker(s) "
                "pinned to it on their next event"
            )

    # connections

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(256):  # a burst at a time, then the other sources get a turn
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # EMFILE and the like: stop accepting for a moment, do not spin
                log(f"accept failed: {error}; pausing 0.1 s")
                self.selector.unregister(self.listener)
                self._accept_paused_until = time.monotonic() + 0.1
                return
            try:
                pid = _PEERCRED.unpack(
                    conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                )[0]
            except OSError:
                pid = 0  # all such peers share one pin: kept together, never split
            self._hand(self._slot_for(pid), conn.detach())

    def _slot_for(self, pid: int) -> _Slot:
        slot = self.pins.get(pid)
        if slot is not None:
            return slot
        slot = min(self.slots, key=lambda s: (len(s.pids), s.index))
        self.pins[pid] = slot
        slot.pids.add(pid)
        if pid > 0:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pass  # gone already, or no pidfds: the pin stays (balance suffers, correctness does not)
            else:
                self.pidfds[pidfd] = pid
                self.selector.register(pidfd, selectors.EVENT_READ, pidfd)
        return slot

    def _peer_exited(self, pidfd: int) -> None:
        """The peer process exited: its pin goes (a new process with its pid is a new nginx worker)."""
        self.selector.unregister(pidfd)
        os.close(pidfd)
        pid = self.pidfds.pop(pidfd)
        slot = self.pins.pop(pid, None)
        if slot is not None:
            slot.pids.discard(pid)

    def _hand(self, slot: _Slot, fd: int) -> None:
        if sum(len(s.waiting) for s in self.slots) >= MAX_WAITING:
            log(f"{MAX_WAITING} connections already wait for a server process; closing one")
            os.close(fd)
            return
        slot.waiting.append(fd)
        if slot.channel is not None:
            self._flush(slot)

    def _flush(self, slot: _Slot) -> None:
        """Send the slot's waiting connections; what the channel cannot take now waits for writability."""
        channel = slot.channel
        assert channel is not None
        while slot.waiting:
            fd = slot.waiting[0]
            try:
                socket.send_fds(channel, [b"c"], [fd])
            except BlockingIOError:
                self.selector.modify(channel, selectors.EVENT_READ | selectors.EVENT_WRITE, slot)
                return
            except OSError:
                self._lost(slot)  # the process is gone: the connection waits for its replacement
                return
            slot.sent.append(slot.waiting.popleft())
        self.selector.modify(channel, selectors.EVENT_READ, slot)

    # stop

    def _shutdown(self) -> None:
        log("stopping the server processes")
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for slot in self.slots:
            if slot.process is not None:
                _reap(slot.process, max(0.0, deadline - time.monotonic()))
            if slot.channel is not None:
                slot.channel.close()
            for fd in (*slot.waiting, *slot.sent):
                os.close(fd)
        for pidfd in self.pidfds:
            os.close(pidfd)
        if self.listener is not None:
            self.listener.close()
        signal.set_wakeup_fd(-1)
        self._wake_r.close()
        self._wake_w.close()
        self.selector.close()


def _reap(process: subprocess.Popen[bytes] | None, timeout: float = 2.0) -> str:
    """Wait (bounded) for a process that is exiting; SIGKILL it if it does not. Says how it ended."""
    if process is None:
        return "never started"
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            return f"pid {process.pid} did not die"
    if code < 0:
        return f"pid {process.pid}, killed by {signal.Signals(-code).name}"
    return f"pid {process.pid}, status {code}"


def run_acceptor(processes: int, server_argv: Sequence[str], runtime: str = RUNTIMES[0]) -> int:
    path = socket_path(server_argv)
    if not os.path.isdir(os.path.dirname(path) or "."):
        log(f"the Kong prefix of {path} does not exist; cannot create the unix socket")
        return 2
    return Acceptor(processes, server_argv, path, runtime).run()


# -- a server process ------------------------------------------------------------------------------------


def die_with_the_acceptor() -> None:
    """SIGKILL from the kernel when the acceptor dies (``PR_SET_PDEATHSIG``): no server process outlives
    it, still serving pooled connections with an instance table the new server does not share."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the channel's end still tells
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the acceptor died before the line above
        os._exit(0)


# -- a single server process -----------------------------------------------------------------------------


def listen_early(argv: Sequence[str]) -> socket.socket | None:
    """The single server process's socket, listening before the server imports what it runs on.

    Until a server listens, every call Kong makes to it fails to connect: Kong 3.9.1 runs that request
    without the plugin, or answers 500 when its worker has to start an instance first
    (``kong/runloop/plugin_servers/plugin.lua``, ``get_instance_id``; docs/fail-closed.md). Once it
    listens, a call waits in the socket's backlog until the server reads it, and is answered. gevent,
    kong-pdk and redis-py take most of a start, so the socket listens before they are imported.
    None when it cannot be bound here: kong-pdk then binds it itself, as before, and says why it
    cannot.
    """
    known = _socket_flags(argv)
    try:
        return bind_listener(os.path.join(known.prefix, known.socket_name), known.listen_queue_size)
    except OSError:
        return None
