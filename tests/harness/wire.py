"""The wire: MessagePack-RPC over the plugin server's unix socket, as Kong's ``Rpc:call`` speaks it.

``kong/runloop/plugin_servers/rpc/mp_rpc.lua`` (3.9; ``plugin_servers/mp_rpc.lua`` in 3.4): a request is
``[0, msgid, method, [args]]``, an answer ``[1, msgid, err, result]``, a notification ``[2, label, args]``;
each call borrows a connection from the nginx worker's keepalive pool (``lua_socket_pool_size``, LIFO)
and gives it back after the answer, so the calls of one event may travel on different connections.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Callable
from typing import Any

import msgpack

DEFAULT_READ_TIMEOUT = 60.0
"""nginx's default ``lua_socket_read_timeout``: how long Kong waits for each RPC answer."""

DEFAULT_POOL_SIZE = 30
"""nginx's default ``lua_socket_pool_size``: idle connections a worker keeps per socket path."""

Connector = Callable[[str], socket.socket]
"""Opens one connection to the socket path (a worker of a node connects from a process of its own)."""


class KongRpcError(Exception):
    """An RPC call failed: connection refused or lost, protocol error, or an error answer from the server.

    ``remote`` is True when the plugin server itself answered with an error string.
    """

    def __init__(self, message: str, *, method: str = "", remote: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.remote = remote


class KongRpcTimeout(KongRpcError):
    """No answer within the read timeout (Kong: ``receiveany`` times out, the call returns "no data")."""


def connect_unix(path: str) -> socket.socket:
    """A plain connection from this process."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


class ConnectionPool:
    """nginx's cosocket keepalive pool for the plugin server's socket (thread-safe, LIFO).

    ``size`` plays ``lua_socket_pool_size``: a connection given back to a full pool is closed, as
    ``setkeepalive`` closes it.
    """

    def __init__(
        self, path: str, *, size: int = DEFAULT_POOL_SIZE, connect: Connector = connect_unix
    ) -> None:
        self.path = path
        self.size = size
        self._connect = connect
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self.opened = 0

    def get(self, timeout: float) -> socket.socket:
        while True:
            with self._lock:
                sock = self._idle.pop() if self._idle else None
            if sock is None:
                break
            if idle_connection_alive(sock):
                sock.settimeout(timeout)
                return sock
            sock.close()  # nginx drops keepalive connections the peer closed
        sock = self._connect(self.path)
        sock.settimeout(timeout)
        with self._lock:
            self.opened += 1
        return sock

    def put(self, sock: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()


def idle_connection_alive(sock: socket.socket) -> bool:
    """True when nothing is readable: no EOF from a dead server, no stray bytes."""
    try:
        sock.setblocking(False)
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            sock.setblocking(True)
    return False  # EOF, or stray bytes: unusable either way


class Rpc:
    """One nginx worker's RPC client for one socket: message ids, the pool, notifications received."""

    def __init__(
        self,
        path: str,
        *,
        timeout: float = DEFAULT_READ_TIMEOUT,
        pool_size: int = DEFAULT_POOL_SIZE,
        connect: Connector = connect_unix,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.pool = ConnectionPool(path, size=pool_size, connect=connect)
        self._msg_ids = itertools.count(1)
        self._msg_lock = threading.Lock()
        self.notifications: list[tuple[Any, Any]] = []

    def call(self, method: str, *args: Any, trace: Callable[[str], None] | None = None) -> Any:
        """One MessagePack-RPC call on a pooled connection (Kong's ``Rpc:call``).

        Raises :class:`KongRpcTimeout` when no answer comes within ``timeout``, :class:`KongRpcError` on a
        connection failure or an error answer.
        """
        with self._msg_lock:
            msg_id = next(self._msg_ids)
        if trace is not None:
            trace(method)
        try:
            sock = self.pool.get(self.timeout)
        except OSError as exc:
            raise KongRpcError(f"trying to connect: {exc}", method=method) from exc
        payload = msgpack.packb([0, msg_id, method, list(args)], use_bin_type=True)
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        try:
            sock.sendall(payload)
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise KongRpcError("no data (connection closed by the plugin server)", method=method)
                unpacker.feed(chunk)
                for message in unpacker:
                    if message[0] == 2:  # notification [2, label, args]
                        self.notifications.append((message[1], message[2]))
                        continue
                    if message[0] != 1 or message[1] != msg_id:
                        raise KongRpcError(f"unexpected RPC message {message!r}", method=method)
                    self.pool.put(sock)
                    if message[2] is not None:
                        raise KongRpcError(str(message[2]), method=method, remote=True)
                    return message[3]
        except TimeoutError as exc:
            sock.close()
            raise KongRpcTimeout(f"no data (timeout after {self.timeout}s)", method=method) from exc
        except KongRpcError as exc:
            if not exc.remote:
                sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise KongRpcError(f"no data ({exc})", method=method) from exc

    def close(self) -> None:
        self.pool.close()
