"""The plugin server process, started, stopped, killed and respawned as Kong's worker 0 does it.

Kong runs the query command once for the plugin's info and only the first entry counts (3.9); worker 0
starts the server with ``exec start_cmd``, merges its stderr into Kong's log and, when it exits, starts
it again no sooner than a second after the previous start (``kong/runloop/plugin_servers/process.lua``,
``pluginserver_timer``: ``next_spawn = ngx.now() + 1``). 3.9 does not wait for the socket to appear.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

RESPAWN_INTERVAL = 1.0
"""Seconds between two starts of the server by Kong (process.lua's ``next_spawn``)."""


class PluginServerStartError(RuntimeError):
    """The plugin server did not come up (its log is part of the message)."""


def _flag_value(argv: Sequence[str], names: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


class PluginServerProcess:
    """Starts a dedicated kong-pdk plugin server and waits until its socket accepts connections.

    ``argv`` is the server command line. The prefix and socket name are taken from ``--kong-prefix`` /
    ``--socket-name`` in ``argv``, or appended from ``prefix`` / ``socket_name`` when given. stdout and
    stderr go to ``<prefix>/<socket name>.log`` so a failing test can print them (:meth:`log_text`).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        prefix: str | os.PathLike[str] | None = None,
        socket_name: str | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> None:
        command = list(argv)
        if prefix is not None:
            command += ["--kong-prefix", os.fspath(prefix)]
        if socket_name is not None:
            command += ["--socket-name", socket_name]
        found_prefix = _flag_value(command, ("--kong-prefix", "-kong-prefix", "-p"))
        found_socket = _flag_value(command, ("--socket-name",))
        if found_prefix is None or found_socket is None:
            raise ValueError("the plugin server needs an explicit --kong-prefix and --socket-name")
        self.argv: list[str] = command
        self.prefix = Path(found_prefix)
        self.socket_path: str = str(self.prefix / found_socket)
        if len(os.fsencode(self.socket_path)) > 107:  # sun_path limit: bind() would fail obscurely
            raise ValueError(f"unix socket path too long ({len(self.socket_path)} bytes): {self.socket_path}")
        self.log_path = self.prefix / f"{found_socket}.log"
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.env = dict(env) if env is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.RLock()  # a test's kill() and the Respawner's start() in turn
        if start:
            self.start()

    @property
    def pid(self) -> int | None:
        """The server's pid, or None when it is not running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def running(self) -> bool:
        return self.pid is not None

    def log_text(self) -> str:
        """Everything the server wrote so far (all starts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, *, wait: bool = True) -> None:
        """Spawn the server and wait, bounded, until its socket accepts a connection.

        ``wait=False`` spawns it and returns at once, as Kong 3.9's process.lua does.
        """
        with self._lock:
            if self.running():
                raise RuntimeError("plugin server already running")
            self.prefix.mkdir(parents=True, exist_ok=True)  # kong-pdk refuses to start without it
            self._close_log()
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
            self._log.write(f"--- harness: starting {self.argv!r}\n".encode())
            self._log.flush()
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=self.env
            )
        if wait:
            self.wait_until_listening()

    def wait_until_listening(self) -> None:
        """Wait, bounded by ``start_timeout``, until the socket accepts a connection."""
        assert self._proc is not None, "the server was never started"
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise PluginServerStartError(
                    f"plugin server exited with {self._proc.returncode} before listening on "
                    f"{self.socket_path}\n--- server log ---\n{self.log_text()}"
                )
            if _socket_accepts(self.socket_path):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise PluginServerStartError(
                    f"plugin server did not listen on {self.socket_path} within {self.start_timeout}s"
                    f"\n--- server log ---\n{self.log_text()}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(self.stop_timeout)
        self._close_log()

    def kill(self) -> None:
        """SIGKILL, as in a crash: the socket file stays behind, connections are reset."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(self.stop_timeout)
            self._close_log()

    def exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the server to exit; True when it has (or was never started)."""
        proc = self._proc
        if proc is None:
            return True
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def accepts(self) -> bool:
        """True when the socket accepts a connection now."""
        return _socket_accepts(self.socket_path)

    def restart(self) -> None:
        """Stop (if running) and start again; the new server numbers its instances from 0."""
        self.stop()
        self.start()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> PluginServerProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _socket_accepts(path: str) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(1.0)
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def dump(argv: Sequence[str], timeout: float = 10.0) -> list[dict[str, Any]]:
    """Run the query command (``argv + ["--dump"]``) and return the parsed JSON list.

    Kong 3.9 uses only the first entry (see :meth:`PluginInfo.from_dump`).
    """
    proc = subprocess.run([*argv, "--dump"], capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")
        raise RuntimeError(f"query command failed ({proc.returncode}): {stderr}")
    entries = json.loads(proc.stdout)
    if not isinstance(entries, list) or not entries:
        raise RuntimeError(f"query command did not print a non-empty JSON list: {proc.stdout!r}")
    return entries


@dataclass(frozen=True)
class PluginInfo:
    """What Kong learns from the query command: the FIRST entry of the dumped list."""

    name: str
    priority: int
    version: str | None
    phases: tuple[str, ...]
    schema: Mapping[str, Any]

    @classmethod
    def from_dump(cls, entries: Sequence[Mapping[str, Any]]) -> PluginInfo:
        first = entries[0]
        return cls(
            name=first["Name"],
            priority=first["Priority"],
            version=first.get("Version"),
            phases=tuple(first.get("Phases") or ()),
            schema=first["Schema"],
        )

    @classmethod
    def query(cls, argv: Sequence[str]) -> PluginInfo:
        return cls.from_dump(dump(argv))

    @property
    def config_fields(self) -> list[Mapping[str, Any]]:
        """``Schema.fields[<config>].config.fields``: a list of ``{name: {type, default, ...}}``."""
        for entry in self.schema.get("fields", []):
            if "config" in entry:
                fields: list[Mapping[str, Any]] = entry["config"].get("fields") or []
                return fields
        return []


class Respawner:
    """Kong's ``pluginserver_timer`` in nginx worker 0: when the server exits, start it again, no sooner
    than :data:`RESPAWN_INTERVAL` after its previous start, without waiting for its socket.

    ``starts``, ``exits`` and ``ups`` (when the socket first accepted after each start, observed by the
    harness only) are ``time.monotonic()`` stamps, for a test to tell which requests met a dead server.
    """

    def __init__(self, server: PluginServerProcess, *, interval: float = RESPAWN_INTERVAL) -> None:
        self.server = server
        self.interval = interval
        now = time.monotonic()
        self.starts: list[float] = [now]
        self.exits: list[float] = []
        self.ups: list[float] = [now] if server.running() else []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pluginserver_timer", daemon=True)

    def start(self) -> Respawner:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop respawning (the server itself is left as it is)."""
        self._stop.set()
        self._thread.join(10)

    def down_windows(self) -> list[tuple[float, float]]:
        """``(exit, socket accepting again)`` for every exit; an open window ends at +inf."""
        return [(exited, next((u for u in self.ups if u >= exited), float("inf"))) for exited in self.exits]

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.server.exited(0.01):
                continue
            self.exits.append(time.monotonic())
            next_spawn = self.starts[-1] + self.interval
            if self._stop.wait(max(0.0, next_spawn - time.monotonic())):
                return
            self.starts.append(time.monotonic())
            try:
                self.server.start(wait=False)
            except Exception as exc:  # process.lua would log it and try again a second later
                self.errors.append(repr(exc))
                continue
            deadline = time.monotonic() + self.server.start_timeout
            while not self._stop.is_set() and time.monotonic() < deadline and self.server.running():
                checked = time.monotonic()  # stamped before the check: a kill right after it is later
                if self.server.accepts():
                    self.ups.append(checked)
                    break
                time.sleep(0.005)
