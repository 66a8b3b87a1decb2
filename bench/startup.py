"""``python -m bench startup``: how long a plugin server takes from its start to serving Kong.

Kong's worker 0 starts the server with ``exec <start_cmd>`` and starts it again about a second after it
dies (``kong/runloop/plugin_servers/process.lua``). Until the server listens, every call Kong makes
fails to connect; Kong 3.9.1 then proxies a request without the plugin (a worker that holds an
instance) or answers 500 (a worker that must start one: ``plugin.lua``'s ``get_instance_id`` raises),
see docs/fail-closed.md. Once it listens, Kong's calls wait for the answers. So each start is
measured at three points, from the moment the benchmark starts the process:

- **listening**: the socket is in the listening state, read from ``/proc/net/unix`` without
  connecting (a connection would be work for the server);
- **first instance**: the answer to ``plugin.StartInstance``, sent as soon as it listens, with the
  configuration Kong would send;
- **first request**: the end of one access event on that instance, an allowed request of a paying
  account (``HandleEvent``, ``StepConsumer``, the header setters), as Kong's bridge loop plays it.

Each is given as wall time and as the CPU time the server's processes spent until then (the
acceptor's server processes included), the median of ``--repeat`` starts. Both move with the load
of the machine. ``--instructions`` runs each start under valgrind's callgrind from the first
instruction (``--instr-atstart=yes``, ``PYTHONHASHSEED=0``): the user-space instructions until the
socket listens (the listening process's) and until the first request is answered (every process
of the server), a measure that does not depend on what else runs.

The reference row is ``bench/baseline_plugin.py --round-trip`` in the same mode: kong-pdk, gevent
patched as the gate patches it, redis-py and the charge's Redis round trip, no gate. The gate's figures
over its are what credit-gate itself adds to a start.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from bench.driver import read_reply, rpc_call
from bench.instructions import START_TIMEOUT, Counted, valgrind_argv
from bench.procs import (
    CREDIT_GATE,
    GATE_SERVER,
    REFERENCE,
    ROUND_TRIP_SERVER,
    BenchError,
    PluginServer,
    RedisServer,
    Runtime,
    cpu_seconds,
    dump,
    machine,
    short_dir,
)
from bench.runner import HUGE_BALANCE, PAYING, PLAN, consumer, kong_config
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.kong.processes import PROCESSES_FLAG, default_processes
from creditgate.ops.admin import Admin

GATE = "credit-gate"
BASELINE = "baseline --round-trip"
POLL_SECONDS = 0.001
_LISTENING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's Flags: listen() was called


def listening(path: str) -> bool:
    """Whether a unix socket bound to ``path`` listens, without connecting to it."""
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & _LISTENING:
                return True
    return False


def access_event(socket_path: str, instance_id: int, who: dict[str, Any], timeout: float) -> list[str]:
    """One access event, Kong's side (mp_rpc.lua's bridge loop) on one connection; the PDK calls."""
    calls: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        msg_id = 0

        def call(method: str, arg: Any) -> Any:
            nonlocal msg_id
            msg_id += 1
            sock.sendall(msgpack.packb([0, msg_id, method, [arg]]))
            return read_reply(sock, unpacker, method)

        answer = call("plugin.HandleEvent", {"InstanceId": instance_id, "EventName": "access"})
        event = answer["EventId"]
        while answer["Data"] != "ret":
            method = answer["Data"]["Method"]
            calls.append(method)
            if method in ("kong.response.exit", "kong.response.error"):
                break  # the delayed response: Kong sends nothing more for this event
            if method == "kong.client.get_consumer":
                answer = call("plugin.StepConsumer", {"EventId": event, "Data": who})
            else:
                answer = call("plugin.Step", {"EventId": event})
    return calls


@dataclass
class Start:
    """One start: seconds from the start of the process, and CPU seconds (or instructions) until then."""

    listening_s: float
    instance_s: float
    first_request_s: float
    cpu_listening_s: float
    cpu_first_request_s: float
    calls: list[str]
    instructions_listening: int | None = None
    instructions_first_request: int | None = None


@dataclass
class Row:
    server: str
    processes: int
    starts: list[Start] = field(default_factory=list)

    def median(self, name: str) -> float:
        values = [getattr(s, name) for s in self.starts if getattr(s, name) is not None]
        return statistics.median(values) if values else float("nan")

    def to_json(self) -> dict[str, Any]:
        figures = (
            "listening_s",
            "instance_s",
            "first_request_s",
            "cpu_listening_s",
            "cpu_first_request_s",
            "instructions_listening",
            "instructions_first_request",
        )
        return {**asdict(self), "median": {name: self.median(name) for name in figures}}


class Startup:
    """A Redis with a paying account, and the servers started one at a time."""

    def __init__(self, instructions: bool) -> None:
        self.instructions = instructions
        self.redis = RedisServer()
        settings = RedisSettings(
            host="127.0.0.1", port=self.redis.port, connect_timeout=1_000, read_timeout=2_000
        )
        self.admin = Admin.connect(settings)
        self.admin.apply_plan(Plan(PLAN, period=Period.MONTH, allowance=0, prepaid=True))
        self.admin.subscribe(PAYING, PLAN, starts_at=self.admin.now() - 60)
        self.admin.grant(PAYING, HUGE_BALANCE, note="benchmark")
        # Under callgrind the first answers take seconds: the gate must not time out on Redis meanwhile.
        timeout = 30_000 if instructions else 2_000
        gate_fields, _ = dump(GATE_SERVER)
        redis = {"host": "127.0.0.1", "port": self.redis.port, "read_timeout": timeout}
        self.gate_config = kong_config(gate_fields, {"cost": 1, "redis": redis}, "startup-gate")
        baseline_fields, _ = dump(ROUND_TRIP_SERVER)
        given = {"redis_port": self.redis.port, "redis_read_timeout": timeout}
        self.baseline_config = kong_config(baseline_fields, given, "startup-baseline")
        self.out_dir = short_dir("cgb-startup-")

    def close(self) -> None:
        self.admin.close()
        self.redis.stop()
        shutil.rmtree(self.out_dir, ignore_errors=True)

    def __enter__(self) -> Startup:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _server(self, argv: list[str], name: str, runtime: Runtime) -> Iterator[tuple[PluginServer, float]]:
        prefix: list[str] = []
        if self.instructions:  # counted from the first instruction (the per-request benchmark starts later)
            prefix = [
                a.replace("--instr-atstart=no", "--instr-atstart=yes") for a in valgrind_argv(self.out_dir)
            ]
        env = {"PYTHONHASHSEED": "0"} if self.instructions else None
        started = time.monotonic()
        server = PluginServer([*prefix, *argv], name, runtime, wait=False, env=env)
        try:
            yield server, started
        finally:
            server.stop()

    def start(self, server_name: str, processes: int) -> Start:
        if server_name == GATE:
            argv, name, config = [*GATE_SERVER, PROCESSES_FLAG, str(processes)], GATE, self.gate_config
        else:
            argv, name, config = ROUND_TRIP_SERVER, "baseline", self.baseline_config
        timeout = START_TIMEOUT if self.instructions else 30.0
        # The gate on its default runtime (credit-gate's); the baseline on kong-pdk's, gevent mode.
        runtime = Runtime(CREDIT_GATE) if server_name == GATE else REFERENCE
        with self._server(argv, name, runtime) as (server, started):
            deadline = started + timeout
            while not listening(server.socket_path):
                if not server.running() or time.monotonic() > deadline:
                    raise BenchError(f"{server_name} did not listen:\n{server.log_text()}")
                time.sleep(POLL_SECONDS)
            at_listening = time.monotonic()
            cpu_listening = cpu_seconds(server.pid)
            counted = Counted(server, self.out_dir)
            to_listening = counted.count([server.pid]) if self.instructions else None
            answer = rpc_call(
                server.socket_path, "plugin.StartInstance", {"Name": name, "Config": config}, timeout
            )
            at_instance = time.monotonic()
            calls = access_event(server.socket_path, int(answer["Id"]), consumer(PAYING), timeout)
            at_first = time.monotonic()
            cpu_first = cpu_seconds(server.pid)
            after_listening = counted.count() if self.instructions else None
            return Start(
                listening_s=at_listening - started,
                instance_s=at_instance - started,
                first_request_s=at_first - started,
                cpu_listening_s=cpu_listening,
                cpu_first_request_s=cpu_first,
                calls=calls,
                instructions_listening=to_listening,
                instructions_first_request=(
                    None
                    if to_listening is None or after_listening is None
                    else to_listening + after_listening
                ),
            )


ALLOWED_CALLS = ["kong.client.get_consumer", "kong.service.request.set_headers", "kong.response.set_headers"]


def run(processes: tuple[int, ...], repeat: int, instructions: bool) -> list[Row]:
    """``repeat`` turns; in each, the baseline and the gate on each process count start one after another."""
    rows = [Row(BASELINE, 1), *(Row(GATE, p) for p in processes)]
    with Startup(instructions) as startup:
        for turn in range(repeat):
            for row in rows:
                start = startup.start(row.server, row.processes)
                if start.calls != ALLOWED_CALLS:
                    raise BenchError(f"{row.server}: the first request was not allowed: {start.calls}")
                row.starts.append(start)
                counted = (
                    f", {start.instructions_first_request:,} instructions"
                    if start.instructions_first_request
                    else ""
                )
                print(
                    f"turn {turn + 1}/{repeat} {row.server} ({row.processes}): listening "
                    f"{start.listening_s * 1000:.0f} ms, "
                    f"first request {start.first_request_s * 1000:.0f} ms, "
                    f"CPU {start.cpu_first_request_s * 1000:.0f} ms{counted}",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def _ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:,.0f}"


def _count(value: float) -> str:
    return "-" if value != value else f"{value / 1e6:,.0f} M"


def markdown(rows: list[Row]) -> str:
    base = rows[0]
    lines = [
        "| server | processes | listening ms | first instance ms | first request ms | CPU to listening ms "
        "| CPU to first request ms | vs baseline (CPU) |"
        + (
            " instructions to listening | instructions to first request | vs baseline |"
            if _counted(rows)
            else ""
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if _counted(rows) else ""),
    ]
    for row in rows:
        cpu = row.median("cpu_first_request_s") / base.median("cpu_first_request_s")
        line = (
            f"| {row.server} | {row.processes} | {_ms(row.median('listening_s'))} | "
            f"{_ms(row.median('instance_s'))} | {_ms(row.median('first_request_s'))} | "
            f"{_ms(row.median('cpu_listening_s'))} | {_ms(row.median('cpu_first_request_s'))} | {cpu:.2f}x |"
        )
        if _counted(rows):
            ratio = row.median("instructions_first_request") / base.median("instructions_first_request")
            line += (
                f" {_count(row.median('instructions_listening'))} | "
                f"{_count(row.median('instructions_first_request'))} | {ratio:.2f}x |"
            )
        lines.append(line)
    return "\n".join(lines)


def _counted(rows: list[Row]) -> bool:
    return any(s.instructions_first_request is not None for row in rows for s in row.starts)


def _processes(text: str) -> tuple[int, ...]:
    values = tuple(int(part) for part in text.split(",") if part.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"a comma-separated list of positive integers, got {text!r}")
    return values


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench startup", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--processes",
        type=_processes,
        default=tuple(dict.fromkeys((1, default_processes()))),
        help="the gate server's --processes, comma-separated: a row each (default: 1 and one per core)",
    )
    p.add_argument("--repeat", type=int, default=7, help="starts per row; medians are reported (default: 7)")
    p.add_argument(
        "--instructions", action="store_true", help="count instructions under valgrind's callgrind (slow)"
    )
    p.add_argument("--json", type=Path, help="also write every start as JSON to this path")
    args = p.parse_args(argv)
    rows = run(args.processes, args.repeat, args.instructions)
    print(markdown(rows))
    if args.json:
        payload = {"machine": machine(), "rows": [row.to_json() for row in rows]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
