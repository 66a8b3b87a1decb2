"""The charge's round trip to a standalone Redis (TCP or unix socket), without redis-py's overhead.

The charge is the one command every request makes, and its cost is the plugin's cost. Measured here
(2 cores, loopback, one EVALSHA of charge.lua): redis-py 8 with hiredis spends about 135 µs of the
plugin server's CPU per charge, a socket with the command packed and the reply parsed by hiredis
about 30 µs. So the hot path keeps hiredis (the C library redis-py itself uses to pack commands and
parse replies) and drops the rest: a pool of plain sockets, one ``send`` and ``recv`` per charge; and
under gevent one connection that the charges of concurrent requests share, pipelined, driven by
gevent's event loop without a greenlet or a timer per charge, the charges of one turn of the loop
sharing one write (about 6 µs per charge at 16 in flight).

The standalone topology builds it for the store (``store/topology/standalone.py``); everything else
(the operators' commands, loading scripts, Sentinel, Cluster, TLS) goes through redis-py. The rules
of the money path hold here as there:

- nothing is ever re-sent after a timeout or a connection error: the outcome of such a charge is
  unknown, the connection is dropped, and the error is raised (the charge's deadline keeps a late
  run from charging);
- ``NOSCRIPT`` (a restarted Redis, a failover, ``SCRIPT FLUSH``) means the script did not run, so
  it is loaded and sent once more, which cannot charge twice; flushed again before that second send,
  the script is sent whole (EVAL), which no flush can refuse: while Redis is up the script reaches it;
- errors are redis-py's own exception classes, so the store maps them as it maps redis-py's.

Under gevent the plugin server patches ``socket`` first, so the pool's sockets (and the pipelined
connection's connect and set-up) yield like redis-py's.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis

from creditgate.core.redis_settings import RedisSettings

RECV_SIZE = 65_536


def pack(*parts: Any) -> bytes:
    """A command in Redis's protocol, packed by hiredis."""
    packed: bytes = hiredis.pack_command(parts)
    return packed


class CommandPacker:
    """EVALSHA commands in Redis's protocol, what repeats from one call to the next packed once.

    hiredis formats every argument's length with ``sprintf``: about 40,000 instructions for the
    charge's 26 arguments and keys, a tenth of an allowed request. From one charge of an account on a
    route to the next only its last arguments change (``varying`` of them: the deadline, the token,
    Kong's request id); the script, the keys and the rest repeat. A caller that can name the repeating
    part (``cache_key``: equal keys promise equal keys and equal arguments but the last ``varying``)
    gets it packed by hiredis once and kept (up to ``limit`` commands' worth, after which the cache
    starts again; a new script SHA starts it again too); the varying arguments are packed by hiredis
    each time. The bytes are hiredis's own either way.
    """

    def __init__(self, varying: int = 0, limit: int = 4096) -> None:
        self.varying = varying
        self.limit = limit
        self._count_length = len(b"*%d\r\n" % varying)  # what hiredis puts before the varying ones
        self._sha = ""
        # Each head with the SHA it was packed for: under kong-pdk's threads a charge that started
        # before a reload may store its head after the cache started again for the new SHA.
        self._heads: dict[Any, tuple[str, bytes]] = {}

    def __call__(
        self,
        sha: str,
        cache_key: Any,
        varying: tuple[Any, ...],
        build: Callable[[], tuple[Sequence[Any], Sequence[Any]]],
    ) -> bytes:
        """EVALSHA ``sha`` with ``build()``'s keys and arguments (called only when nothing is kept:
        ``cache_key`` None, or seen first); ``varying`` are its last arguments."""
        if cache_key is None or len(varying) != self.varying or not varying:
            return _whole(sha, *build())
        if sha != self._sha:
            self._heads.clear()
            self._sha = sha
        try:
            kept = self._heads.get(cache_key)
        except TypeError:  # an unhashable key: nothing kept
            return _whole(sha, *build())
        if kept is not None and kept[0] == sha:
            head = kept[1]
        else:
            keys, args = build()
            if len(args) < len(varying) or list(args[len(args) - len(varying) :]) != list(varying):
                return _whole(sha, keys, args)  # not the arguments the caller said: nothing kept
            head = _without_count(_whole(sha, keys, args[: len(args) - len(varying)]))
            head = b"*%d\r\n%b" % (3 + len(keys) + len(args), head)
            if len(self._heads) >= self.limit:
                self._heads.clear()
            self._heads[cache_key] = (sha, head)
        tail: bytes = hiredis.pack_command(varying)
        return head + tail[self._count_length :]


def _whole(sha: str, keys: Sequence[Any], args: Sequence[Any]) -> bytes:
    packed: bytes = hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args))
    return packed


def _without_count(packed: bytes) -> bytes:
    """A packed command less its leading ``*<count>\\r\\n``."""
    return packed[packed.index(b"\n") + 1 :]


class HotPath:
    """EVALSHA of one script on a pool of plain connections to one standalone Redis."""

    def __init__(
        self,
        settings: RedisSettings,
        sha: str,
        load_script: Callable[[], str],
        source: str = "",
        *,
        varying_args: int = 0,
    ) -> None:
        self._address: str | tuple[str, int] = settings.socket_path or (settings.host, settings.port)
        self._connect_timeout = settings.connect_timeout / 1000
        self._read_timeout = settings.read_timeout / 1000
        self._handshake = self._handshake_commands(settings)
        self._sha = sha
        self._load_script = load_script
        self._source = source
        self._idle: list[socket.socket] = []
        self._pack = CommandPacker(varying_args)  # how many of the last arguments change between calls
        self._lock = threading.Lock()
        self._pipeline: _GeventPipeline | None = None
        if _gevent_patched():
            self._pipeline = _GeventPipeline(self._connect, self._read_timeout)

    @staticmethod
    def _handshake_commands(settings: RedisSettings) -> list[bytes]:
        commands: list[bytes] = []
        if settings.password is not None:
            auth = ("AUTH", settings.username, settings.password) if settings.username else None
            commands.append(pack(*(auth or ("AUTH", settings.password))))
        if settings.database:
            commands.append(pack("SELECT", settings.database))
        return commands

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline.close()
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    def drop_connections(self) -> None:
        """Connect again for the next charge (the store calls it after READONLY: these connections
        lead to a node a failover demoted). The idle connections are closed; the shared one under
        gevent is handed out no more and closes once the replies it waits for are in, so that the
        charges in flight on it still learn their outcome."""
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()
        if self._pipeline is not None:
            self._pipeline.retire()

    def evalsha(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's reply; bulk strings arrive decoded (UTF-8)."""
        return self.evalsha_kept(None, (), lambda: (keys, args))

    def evalsha_kept(
        self,
        cache_key: Any,
        varying: tuple[Any, ...],
        build: Callable[[], tuple[Sequence[str], Sequence[Any]]],
    ) -> Any:
        """The same for ``build()``'s keys and arguments, the repeating part packed once and kept under
        ``cache_key`` (see ``CommandPacker``: ``varying`` are the last arguments, packed each time)."""
        loaded = False
        while True:
            reply = self._round_trip(self._pack(self._sha, cache_key, varying, build))
            if not isinstance(reply, hiredis.ReplyError):
                return reply
            if not str(reply).startswith("NOSCRIPT"):
                raise redis.exceptions.ResponseError(str(reply))
            if loaded and self._source:  # flushed again in between: the whole script, once
                keys, args = build()
                reply = self._round_trip(
                    hiredis.pack_command(("EVAL", self._source, len(keys), *keys, *args))
                )
                if isinstance(reply, hiredis.ReplyError):
                    raise redis.exceptions.ResponseError(str(reply))
                return reply
            if loaded:
                raise redis.exceptions.ResponseError(str(reply))
            self._sha = self._load_script()  # the script did not run: sending it again is safe
            loaded = True

    def _round_trip(self, command: bytes) -> Any:
        pipeline = self._pipeline
        if pipeline is not None:
            connection = pipeline.connection
            if connection is None or connection.broken:
                connection = pipeline.open()
            return connection.round_trip(command)
        sock = self._checkout()
        try:
            self._send(sock, command)
            reply = self._read(sock, hiredis.Reader(encoding="utf-8"))
        except BaseException:
            sock.close()  # its state is unknown: never reuse it
            raise
        with self._lock:
            self._idle.append(sock)
        return reply

    def _checkout(self) -> socket.socket:
        """An idle connection Redis has not closed, or a new one.

        Redis closes a client idle for longer than its ``timeout`` setting. A charge written to such a
        socket fails after the send, where re-sending it is never safe (the gate cannot tell it did not
        run): so a closed socket is found before anything is written, by a poll that does not wait.
        """
        while True:
            with self._lock:
                if not self._idle:
                    break
                sock = self._idle.pop()
            if _still_open(sock):
                return sock
            sock.close()
        return self._connect()

    def _connect(self) -> socket.socket:
        try:
            if isinstance(self._address, str):  # a unix socket
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(self._connect_timeout)
                    sock.connect(self._address)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(self._address, timeout=self._connect_timeout)
        except TimeoutError as error:
            raise redis.exceptions.TimeoutError(f"connecting to {self._address}: {error}") from error
        except OSError as error:
            raise redis.exceptions.ConnectionError(f"connecting to {self._address}: {error}") from error
        try:
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self._read_timeout)
            for command in self._handshake:
                self._send(sock, command)
                reply = self._read(sock, hiredis.Reader())
                if isinstance(reply, hiredis.ReplyError):  # a wrong password, an unknown database
                    raise redis.exceptions.ConnectionError(f"Redis refused the connection's set-up: {reply}")
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def _send(sock: socket.socket, command: bytes) -> None:
        try:
            sent = sock.send(command)  # gevent's sendall asks for SO_SNDBUF on every call: a syscall
            while sent < len(command):
                sent += sock.send(command[sent:])
        except TimeoutError as error:
            raise redis.exceptions.TimeoutError(f"sending to Redis: {error}") from error
        except OSError as error:
            raise redis.exceptions.ConnectionError(f"sending to Redis: {error}") from error

    @staticmethod
    def _read(sock: socket.socket, reader: hiredis.Reader) -> Any:
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except TimeoutError as error:
                raise redis.exceptions.TimeoutError(f"Redis did not answer in time: {error}") from error
            except OSError as error:
                raise redis.exceptions.ConnectionError(f"reading from Redis: {error}") from error
            if not data:
                raise redis.exceptions.ConnectionError("Redis closed the connection")
            reader.feed(data)
            reply = reader.gets()
            if reply is not False:
                return reply


def _still_open(sock: socket.socket) -> bool:
    """True when an idle socket has nothing to read: neither Redis's close (EOF, a reset) nor bytes that
    nobody asked for. One poll that does not wait; no round trip to Redis."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))


class _GeventPipeline:
    """Under gevent: the charges of concurrent requests share one connection, pipelined.

    Opens the connection on first use and again after it broke; the work per charge is in
    ``_PipelinedConnection``, which ``HotPath`` calls directly.
    """

    def __init__(self, connect: Callable[[], socket.socket], read_timeout: float) -> None:
        from gevent.lock import Semaphore

        self._connect = connect
        self._read_timeout = read_timeout
        self._connect_lock = Semaphore()  # concurrent first charges open one connection, not many
        self.connection: _PipelinedConnection | None = None

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.fail("closed")

    def retire(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.retire()

    def open(self) -> _PipelinedConnection:
        with self._connect_lock:
            connection = self.connection
            if connection is None or connection.broken:
                connection = self.connection = _PipelinedConnection(self._connect(), self._read_timeout)
            return connection


class _Pending:
    """A charge sent on the pipelined connection, waiting for its reply until ``deadline``."""

    __slots__ = ("deadline", "waiter")

    def __init__(self, waiter: Any, deadline: float) -> None:
        self.waiter: Any = waiter  # None once the request stopped waiting: its reply is dropped
        self.deadline = deadline


class _PipelinedConnection:
    """One connection to Redis, driven by gevent's event loop itself.

    A request queues its command in ``_unsent`` and waits on a ``Waiter``; the event loop sends what
    is queued once per turn (the socket never blocks: what the kernel does not take yet waits for a
    write event). Replies come in the order of the commands; the loop's read event parses them with
    hiredis and switches to each waiting request in turn.
    No greenlet of its own, no timer per request: a single repeating timer fails the requests whose
    deadline passed (at most a tenth of the read timeout late) and keeps their places in the queue,
    so later replies still line up. If Redis has answered nothing for another read timeout after
    that, the connection is given up: every request on it fails and the next one opens a new
    connection. Nothing is ever sent twice.
    """

    def __init__(self, sock: socket.socket, read_timeout: float) -> None:
        from gevent import get_hub
        from gevent._waiter import Waiter
        from gevent.monkey import get_original

        self._new_waiter = Waiter
        self.broken = False
        self._retired = False  # handed out no more: closes once its last reply is in
        self._hub = get_hub()
        self._read_timeout = read_timeout
        plain_socket = get_original("socket", "socket")
        self._sock: socket.socket = plain_socket(fileno=sock.detach())
        self._sock.setblocking(False)
        self._parser = hiredis.Reader(encoding="utf-8")
        # Read into one buffer, copied by the parser: a fresh 64 KiB bytes object per read costs a
        # malloc, often a page fault, and a shrink.
        self._buffer = bytearray(RECV_SIZE)
        self._pending: deque[_Pending] = deque()
        self._unsent = bytearray()
        self._flush_scheduled = False
        loop = self._hub.loop
        fd = self._sock.fileno()
        # The socket's events keep the event loop running while requests wait on them; the timer
        # alone does not (ref=False), so that it never holds a finished program.
        self._readable = loop.io(fd, 1)
        self._writable = loop.io(fd, 2)
        tick = max(read_timeout / 10, 0.001)
        self._ticker = loop.timer(tick, tick, ref=False)
        self._readable.start(self._on_readable)
        self._ticker.start(self._on_tick)

    def round_trip(self, command: bytes) -> Any:
        """Send ``command`` and wait for its reply; the caller has checked that the connection is whole."""
        waiter = self._new_waiter(self._hub)
        pending = _Pending(waiter, time.monotonic() + self._read_timeout)
        self._pending.append(pending)
        # Sent from the event loop, once per turn of it, before it next waits: the charges requests
        # make in the same turn share one write (one system call, one wake-up of Redis).
        self._unsent += command
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._hub.loop.run_callback(self._flush)
        try:
            return waiter.get()
        except BaseException:
            pending.waiter = None  # a timeout, a lost connection, a killed greenlet: stop waiting
            raise

    def retire(self) -> None:
        """Take no more commands (HotPath no longer hands this connection out) and close once every
        reply it waits for is in."""
        self._retired = True
        if not self._pending:
            self.fail("retired")

    def fail(
        self, why: str, error_class: type[redis.exceptions.RedisError] = redis.exceptions.ConnectionError
    ) -> None:
        """Close the connection and fail every request waiting on it (from the event loop)."""
        if self.broken:
            return
        self.broken = True
        for watcher in (self._readable, self._writable, self._ticker):
            watcher.stop()
            watcher.close()
        self._sock.close()
        waiters = [pending.waiter for pending in self._pending if pending.waiter is not None]
        self._pending.clear()
        self._unsent.clear()
        if waiters:
            self._hub.loop.run_callback(_throw_into, waiters, why, error_class)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.broken or self._writable.active:
            return  # nothing to send, or the write event will send it in order
        self._on_writable()

    def _on_writable(self) -> None:
        try:
            sent = self._sock.send(self._unsent)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            self.fail(f"sending to Redis: {error}")
            return
        del self._unsent[:sent]
        if not self._unsent:
            if self._writable.active:
                self._writable.stop()
        elif not self._writable.active:
            self._writable.start(self._on_writable)  # the kernel took part: the rest when it has room

    def _on_readable(self) -> None:
        try:
            size = self._sock.recv_into(self._buffer)
        except BlockingIOError:
            return
        except OSError as error:
            self.fail(f"reading from Redis: {error}")
            return
        if not size:
            self.fail("Redis closed the connection")
            return
        parser = self._parser
        pending = self._pending
        try:
            parser.feed(self._buffer, 0, size)  # type: ignore[arg-type]  # any buffer; the stub says bytes
            reply = parser.gets()
            while reply is not False:
                if not pending:
                    self.fail("Redis sent a reply nobody asked for")
                    return
                waiter = pending.popleft().waiter
                if waiter is not None:
                    waiter.switch(reply)  # runs the request until it waits again
                    if self.broken:
                        return
                reply = parser.gets()
            if self._retired and not pending:
                self.fail("retired")
        except hiredis.ProtocolError as error:
            self.fail(f"Redis's reply did not parse: {error}")

    def _on_tick(self) -> None:
        now = time.monotonic()
        expired = []
        for pending in self._pending:  # in the order sent, so of deadlines
            if pending.deadline > now:
                break
            if pending.waiter is not None:
                expired.append(pending.waiter)
                pending.waiter = None
        if self._pending and self._pending[0].deadline + self._read_timeout <= now:
            self.fail("Redis has not answered for twice the read timeout", redis.exceptions.TimeoutError)
        if expired:
            _throw_into(expired, "Redis did not answer in time", redis.exceptions.TimeoutError)


def _throw_into(waiters: list[Any], why: str, error_class: type[redis.exceptions.RedisError]) -> None:
    """In the event loop: raise a fresh error in each waiting request."""
    for waiter in waiters:
        waiter.throw(error_class(why))
