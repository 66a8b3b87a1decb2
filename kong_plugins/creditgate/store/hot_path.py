"""The charge's round trip to a standalone Redis, without redis-py's per-command overhead.

The charge is the one command every request makes, and its cost is the plugin's cost. Measured here
(2 cores, loopback, one EVALSHA of charge.lua): redis-py 8 with hiredis spends about 135 µs of the
plugin server's CPU per charge, a socket with the command packed and the reply parsed by hiredis
about 30 µs. So the hot path keeps hiredis (the C library redis-py itself uses to pack commands and
parse replies) and drops the rest: a pool of plain sockets, one ``send`` and ``recv`` per charge; and
under gevent one connection that the charges of concurrent requests share, pipelined.

Everything else (the operators' commands, loading scripts, Sentinel, Cluster, TLS) goes through
redis-py. The rules of the money path hold here as there:

- nothing is ever re-sent after a timeout or a connection error: the outcome of such a charge is
  unknown, the connection is dropped, and the error is raised (the charge's deadline keeps a late
  run from charging);
- ``NOSCRIPT`` (a restarted Redis, a failover, ``SCRIPT FLUSH``) means the script did not run, so
  it is loaded and sent once more, which cannot charge twice;
- errors are redis-py's own exception classes, so the store maps them as it maps redis-py's.

Under gevent the plugin server patches ``socket`` first, so these sockets yield like redis-py's.
"""

from __future__ import annotations

import socket
import threading
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


class HotPath:
    """EVALSHA of one script on a pool of plain connections to one standalone Redis."""

    def __init__(self, settings: RedisSettings, sha: str, load_script: Callable[[], str]) -> None:
        self._address = (settings.host, settings.port)
        self._connect_timeout = settings.connect_timeout / 1000
        self._read_timeout = settings.read_timeout / 1000
        self._handshake = self._handshake_commands(settings)
        self._sha = sha
        self._load_script = load_script
        self._idle: list[socket.socket] = []
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

    def evalsha(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        command = pack("EVALSHA", self._sha, len(keys), *keys, *args)
        reply = self._round_trip(command)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            self._sha = self._load_script()  # the script did not run: sending it again is safe
            reply = self._round_trip(pack("EVALSHA", self._sha, len(keys), *keys, *args))
        if isinstance(reply, hiredis.ReplyError):
            raise redis.exceptions.ResponseError(str(reply))
        return reply

    def _round_trip(self, command: bytes) -> Any:
        if self._pipeline is not None:
            return self._pipeline.round_trip(command)
        sock = self._checkout()
        try:
            self._send(sock, command)
            reply = self._read(sock, hiredis.Reader())
        except BaseException:
            sock.close()  # its state is unknown: never reuse it
            raise
        with self._lock:
            self._idle.append(sock)
        return reply

    def _checkout(self) -> socket.socket:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection(self._address, timeout=self._connect_timeout)
        except TimeoutError as error:
            raise redis.exceptions.TimeoutError(f"connecting to {self._address}: {error}") from error
        except OSError as error:
            raise redis.exceptions.ConnectionError(f"connecting to {self._address}: {error}") from error
        try:
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


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))


class _GeventPipeline:
    """Under gevent: the charges of concurrent requests share one connection, pipelined.

    Each request sends its command and waits on its own result; one reader greenlet parses the
    replies, which Redis sends in the order of the commands, and hands each to its waiter. A
    request that times out leaves its place in the queue, so the reply that comes later still
    lines up (and the charge's deadline keeps it from charging). Waiting on a result instead of on
    the socket saves the event loop's work per request: one read serves every reply that arrived.
    A broken connection fails every request waiting on it, and the next request opens a new one.
    """

    def __init__(self, connect: Callable[[], socket.socket], read_timeout: float) -> None:
        from gevent.lock import Semaphore

        self._connect = connect
        self._read_timeout = read_timeout
        self._send_lock = Semaphore()  # a command and its place in the queue go together
        self._connection: _PipelinedConnection | None = None

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.fail(redis.exceptions.ConnectionError("closed"))

    def round_trip(self, command: bytes) -> Any:
        from gevent import Timeout
        from gevent.event import AsyncResult

        result: AsyncResult = AsyncResult()
        with self._send_lock:
            connection = self._connection
            if connection is None or connection.broken:
                connection = self._connection = _PipelinedConnection(self._connect())
            connection.waiters.append(result)
            try:
                HotPath._send(connection.sock, command)
            except BaseException as error:
                connection.fail(error)
                raise
        try:
            reply = result.get(timeout=self._read_timeout)
        except Timeout as error:
            raise redis.exceptions.TimeoutError("Redis did not answer in time") from error
        return reply


class _PipelinedConnection:
    def __init__(self, sock: socket.socket) -> None:
        import gevent

        self.sock = sock
        self.sock.settimeout(None)  # the waiters have the timeouts; the reader waits for Redis
        self.waiters: deque[Any] = deque()
        self.broken = False
        self._reader = gevent.spawn(self._read_replies)

    def fail(self, error: BaseException) -> None:
        if not self.broken:
            self.broken = True
            self.sock.close()
        while self.waiters:
            self.waiters.popleft().set_exception(_as_redis_error(error))

    def _read_replies(self) -> None:
        reader = hiredis.Reader()
        try:
            while not self.broken:
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    raise redis.exceptions.ConnectionError("Redis closed the connection")
                reader.feed(data)
                reply = reader.gets()
                while reply is not False:
                    self.waiters.popleft().set(reply)
                    reply = reader.gets()
        except BaseException as error:  # the connection is unusable: fail whoever waits on it
            self.fail(error)


def _as_redis_error(error: BaseException) -> BaseException:
    if isinstance(error, redis.exceptions.RedisError):
        return error
    return redis.exceptions.ConnectionError(f"Redis connection lost: {error}")
