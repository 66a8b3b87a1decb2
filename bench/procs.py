"""The processes the benchmark runs (redis-server, plugin servers) and what ``/proc`` says about them.

Everything listens on loopback or a unix socket in a temporary directory; the machine's own Redis
(6379) is never touched.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import redis

from creditgate.kong.node_report import INTERVAL_ENV
from creditgate.kong.processes import RUNTIME_FLAG, RUNTIMES

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGESIZE") // 1024

# The console script pip installed next to this Python: the command Kong's start_cmd runs.
GATE_SERVER = [str(Path(sys.executable).with_name("credit-gate-pluginserver"))]
BASELINE_SERVER = [sys.executable, str(Path(__file__).with_name("baseline_plugin.py"))]
ROUND_TRIP_SERVER = [*BASELINE_SERVER, "--round-trip"]

# kong-pdk 0.36's concurrency flags (``kong_pdk/cli.py``).
MODE_FLAGS: dict[str, list[str]] = {"threads": [], "gevent": ["-g"], "processes": ["-m"]}

# What serves Kong's protocol for a row. The Python servers (the gate's and bench/baseline_plugin.py)
# take ``--runtime``: credit-gate's own runtime (``creditgate.kong.plugin_server``, the gate's default)
# or kong-pdk 0.36's server. Kong's JavaScript plugin server (npm kong-pdk, bench/js_peer.py) is the peer.
CREDIT_GATE, KONG_PDK, KONG_JS = RUNTIMES[0], RUNTIMES[1], "kong-js-pdk"


@dataclass(frozen=True)
class Runtime:
    """A runtime, and kong-pdk's concurrency mode when it is kong-pdk's (the others have none to choose:
    credit-gate's runs one gevent loop, Kong's JS server node's event loop)."""

    name: str
    mode: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} {self.mode}" if self.mode else self.name

    @property
    def slug(self) -> str:
        """For file names: short, as the socket's path must stay under 108 bytes."""
        return {CREDIT_GATE: "cg", KONG_PDK: "kp", KONG_JS: "js"}[self.name] + (self.mode or "")[:2]

    def flags(self) -> list[str]:
        """The server's flags for this runtime (Kong's JS server has neither ``--runtime`` nor modes)."""
        if self.name == KONG_JS:
            return []
        return [RUNTIME_FLAG, self.name, *(MODE_FLAGS[self.mode] if self.mode else [])]

    @property
    def socket_flag(self) -> str:
        """kong-pdk's ``--socket-name``; Kong's JS server calls it ``--sock-name`` (its ``cli.js``)."""
        return "--sock-name" if self.name == KONG_JS else "--socket-name"


# Every other row is divided by this one's windows: kong-pdk 0.36 in gevent mode running the baseline.
REFERENCE = Runtime(KONG_PDK, "gevent")
PEER = Runtime(KONG_JS)


def runtimes(names: Sequence[str], modes: Sequence[str]) -> list[Runtime]:
    """The rows' runtimes: credit-gate's once (no mode to choose), kong-pdk's in each mode."""
    out: list[Runtime] = []
    for name in names:
        out += [Runtime(name)] if name == CREDIT_GATE else [Runtime(name, mode) for mode in modes]
    return out


class BenchError(RuntimeError):
    """The benchmark could not run (a server did not start, a seed failed)."""


# /proc


def _stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` split after the command name (which may hold spaces); field 3 is index 0."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    """Live child processes, from every thread's ``children`` list."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except OSError:
            continue
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        todo += _children(current)
    return seen


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its descendants: live ones (utime + stime) and reaped ones
    (the cutime + cstime each process accumulated from children it waited for)."""
    ticks = 0
    for p in process_tree(pid):
        try:
            fields = _stat_fields(p)
        except (OSError, ValueError):
            continue  # exited between the listing and the read
        ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` plus that of its live descendants (``-m`` mode's pool workers), in KiB."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def short_dir(prefix: str) -> Path:
    """A temporary directory with a short path: unix socket paths are limited to 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def _stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


# redis-server


class RedisServer:
    """A redis-server of our own on 127.0.0.1:<free port> and a unix socket, without persistence."""

    def __init__(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise BenchError("redis-server is not installed (apt-get install redis-server)")
        self.directory = short_dir("cgb-redis-")
        self.port = free_port()
        self.unix_socket = self.directory / "redis.sock"  # short_dir keeps it under 108 bytes
        argv = [
            executable,
            *("--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)),
            *("--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"),
            *("--save", "", "--appendonly", "no", "--logfile", str(self.directory / "redis.log")),
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=5, socket_connect_timeout=5
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client.ping():
                    return
            except redis.exceptions.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self) -> RedisStats:
        """One ``INFO stats commandstats`` reading: Redis's own counters."""
        info: dict[str, Any] = self.client.info("stats", "commandstats")
        return RedisStats(
            reads=int(info["total_reads_processed"]),
            writes=int(info["total_writes_processed"]),
            commands=int(info["total_commands_processed"]),
            connections=int(info["total_connections_received"]),
            error_replies=int(info.get("total_error_replies", 0)),
            calls={
                k.removeprefix("cmdstat_"): int(v["calls"])
                for k, v in info.items()
                if k.startswith("cmdstat_")
            },
            usec={
                k.removeprefix("cmdstat_"): int(v["usec"])
                for k, v in info.items()
                if k.startswith("cmdstat_")
            },
        )

    def stop(self) -> None:
        self.client.close()
        _stop(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


# Commands a script cannot run, so every call counted is a client's request.
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")
SETUP_COMMANDS = ("hello", "auth", "select", "client|setinfo", "client|setname")


@dataclass(frozen=True)
class RedisStats:
    """Redis's counters. ``reads``/``writes`` are socket reads of requests and writes of replies:
    round trips (a pipeline is one). ``commands`` and ``calls`` also count the commands a script runs
    inside Redis, so they are not round trips."""

    reads: int
    writes: int
    commands: int
    connections: int
    error_replies: int
    calls: dict[str, int]
    usec: dict[str, int]

    def since(self, before: RedisStats) -> RedisStats:
        """What happened between two readings, without the readings themselves: the first one's
        reply write and the second one's request read fall inside the interval."""
        calls = {k: v - before.calls.get(k, 0) for k, v in self.calls.items()}
        calls["info"] = calls.get("info", 0) - 1
        usec = {k: v - before.usec.get(k, 0) for k, v in self.usec.items()}
        return RedisStats(
            reads=self.reads - before.reads - 1,
            writes=self.writes - before.writes - 1,
            commands=self.commands - before.commands - 1,
            connections=self.connections - before.connections,
            error_replies=self.error_replies - before.error_replies,
            calls={k: v for k, v in sorted(calls.items()) if v},
            usec={k: v for k, v in sorted(usec.items()) if calls.get(k)},
        )

    @property
    def script_calls(self) -> int:
        return sum(self.calls.get(name, 0) for name in SCRIPT_COMMANDS)

    @property
    def setup_round_trips(self) -> int:
        """Round trips of connection set-up: the hand-shake commands and the commands Redis rejected
        (redis-py 8 opens each connection with ``HELLO 3`` and ``CLIENT MAINT_NOTIFICATIONS ON``, which
        Redis 7.0 answers with an error). A rejected command is not in ``INFO commandstats``."""
        return sum(self.calls.get(name, 0) for name in SETUP_COMMANDS) + self.error_replies


# Plugin servers


class PluginServer:
    """One plugin server on ``runtime``, listening on ``<temporary prefix>/<name>.sock``."""

    def __init__(
        self,
        argv: list[str],
        name: str,
        runtime: Runtime,
        start_timeout: float = 15.0,
        *,
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.runtime = runtime
        self.prefix = short_dir("cgb-")
        self.socket_path = str(self.prefix / f"{name}.sock")
        self.argv = [
            *argv,
            *runtime.flags(),
            "--kong-prefix",
            str(self.prefix),
            runtime.socket_flag,
            f"{name}.sock",
        ]
        self.log_path = self.prefix / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - open for the server's lifetime
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # No node report (kong/node_report.py): its writes every 10 s land in whichever row's window
            # is running, and Redis's counters are the bench's measure of round trips.
            env={**os.environ, INTERVAL_ENV: "0", **(env or {})},
        )
        self.start_timeout = start_timeout
        if wait:
            self.wait_listening()

    def wait_listening(self) -> None:
        """Until the server accepts connections (``wait=False`` starts several at once, then waits)."""
        deadline = time.monotonic() + self.start_timeout
        while not _accepts(self.socket_path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log_text()
                self.stop()
                raise BenchError(f"plugin server {self.name} ({self.runtime.label}) did not listen:\n{log}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        _stop(self.process)
        self._log.close()
        shutil.rmtree(self.prefix, ignore_errors=True)


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except OSError:
            return False
        return True


def dump(argv: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The plugin's config fields and phases from its query command (``--dump``), as Kong reads them."""
    proc = subprocess.run([*argv, "--dump"], capture_output=True, timeout=30, check=True)
    first = json.loads(proc.stdout)[0]  # Kong 3.9 uses only the first entry
    phases = list(first.get("Phases") or [])
    for entry in first["Schema"]["fields"]:
        if "config" in entry:
            return entry["config"]["fields"], phases
    return [], phases


# The machine


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def machine() -> dict[str, Any]:
    """What the figures ran on."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        redis_version = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()
        redis_server = next((w.split("=", 1)[1] for w in redis_version if w.startswith("v=")), "?")
    except OSError:
        redis_server = "?"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": redis_server,
        "kong_pdk": _version("kong-pdk"),
        "redis_py": _version("redis"),
        "hiredis": _version("hiredis"),
        "gevent": _version("gevent"),
        "msgpack": _version("msgpack"),
    }
