"""A listener in place of a Redis that is down: it counts the connections a client tries.

A refused connection leaves no trace a test can read; this listener accepts each connection, counts it
and closes it at once, so the client still meets a connection error, and the test learns how many
connections it tried (one per request: no retry loop with back-off waiting between attempts).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import TracebackType


class CountingListener:
    """Accepts, counts and closes connections on a loopback TCP port or a unix socket path, in a thread.

    A client's error on a closed connection comes after the close, so after the count: ``attempts``
    read once the client gave up holds all of its connections.
    """

    def __init__(self, server: socket.socket) -> None:
        self._server = server
        self._server.settimeout(0.05)  # how often the thread looks whether it must stop
        self._attempts = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="counting-listener", daemon=True)
        self._thread.start()

    @classmethod
    def tcp(cls, port: int) -> CountingListener:
        """On 127.0.0.1:``port`` (0: any free one), which a stopped server may just have left: the
        listener sets SO_REUSEADDR, as Redis does."""
        return cls(socket.create_server(("127.0.0.1", port)))

    @classmethod
    def unix(cls, path: Path) -> CountingListener:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen()
        return cls(server)

    @property
    def port(self) -> int:
        """The TCP port listened on (``tcp(0)``: one the kernel chose)."""
        return int(self._server.getsockname()[1])

    @property
    def attempts(self) -> int:
        with self._lock:
            return self._attempts

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            with self._lock:
                self._attempts += 1
            connection.close()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join()
        self._server.close()

    def __enter__(self) -> CountingListener:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
