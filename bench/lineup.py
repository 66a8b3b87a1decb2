"""What a run runs: its settings, and the servers of a row set (the runtimes the benchmark compares).

A row set is every server up at once for one way to Redis: per runtime (``--runtime``; kong-pdk's in
each ``--mode``) the baseline, the baseline + the charge's round trip and the gate on each process
count, plus the reference (kong-pdk 0.36 gevent's baseline, which every other row is divided by) and
the peer (Kong's JavaScript plugin server running the baseline, ``js_peer.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench import js_peer
from bench.procs import (
    BASELINE_SERVER,
    GATE_SERVER,
    KONG_JS,
    PEER,
    REFERENCE,
    ROUND_TRIP_SERVER,
    Runtime,
    runtimes,
)
from creditgate.kong.processes import PROCESSES_FLAG, RUNTIMES, default_processes

# "round_trip": the baseline plus the charge's Redis round trip, without the gate's logic.
PATHS = ("baseline", "round_trip", "allowed", "refused")
GATE_PATHS = ("allowed", "refused")
SERVER_STARTS = 60.0  # seconds a server may take to listen, all of a row set starting at once


@dataclass(frozen=True)
class Settings:
    runtimes: tuple[str, ...] = RUNTIMES  # the Python servers' --runtime: credit-gate's own, kong-pdk's
    modes: tuple[str, ...] = ("threads", "gevent")  # kong-pdk's modes, for its runtime's rows
    js: bool = True  # the peer row: Kong's JavaScript plugin server running the baseline (js_peer.py)
    # The gate's server processes (--processes): today's single process, and one per core.
    processes: tuple[int, ...] = tuple(dict.fromkeys((1, default_processes())))
    transports: tuple[str, ...] = ("tcp", "unix")  # how the gate reaches Redis: loopback TCP, unix socket
    concurrencies: tuple[int, ...] = (1, 16, 64)
    requests: int = 3_000
    warmup: int = 1_000
    repeat: int = 5
    drivers: int = 2
    timeout: float = 60.0
    cost: int = 1
    redis_read_timeout_ms: int = 2_000
    table: bool = True
    long: bool = False
    long_requests: int = 100_000
    long_concurrency: int = 16
    overspend: bool = False
    overspend_balance: int = 1_000
    overspend_requests: int = 5_000
    overspend_concurrency: int = 64
    overspend_servers: int = 3
    instructions: bool = False  # --instructions: instructions per request, under valgrind's callgrind
    instruction_requests: int = 300
    witness: bool = False  # --witness: the gate with bypass_witness (two PDK calls more a request)


def mode_label(runtime: Runtime, transport: str, processes: int = 1) -> str:
    """How a row set reads in the results: the runtime (and kong-pdk's mode), the gate's server
    processes, and the way to Redis if not TCP."""
    label = f"{runtime.label}, {processes} process{'es' if processes > 1 else ''}"
    return label if transport == "tcp" else f"{label} (unix socket)"


@dataclass(frozen=True)
class ServerSpec:
    """One server of a row set: the baseline, the baseline + the round trip, or the gate, on a runtime."""

    kind: str  # "baseline", "round_trip" or "gate"
    runtime: Runtime
    processes: int = 1

    @property
    def name(self) -> str:
        """Its socket's name: unique within a row set, and short."""
        short = {"baseline": "base", "round_trip": "rt", "gate": "gate"}[self.kind]
        return f"{short}-{self.runtime.slug}-{self.processes}"

    @property
    def plugin(self) -> str:
        return "credit-gate" if self.kind == "gate" else "baseline"

    @property
    def paths(self) -> tuple[str, ...]:
        return GATE_PATHS if self.kind == "gate" else (self.kind,)

    def argv(self) -> list[str]:
        if self.runtime.name == KONG_JS:
            return js_peer.server_argv()
        if self.kind == "gate":
            return [*GATE_SERVER, PROCESSES_FLAG, str(self.processes)]
        return list(BASELINE_SERVER if self.kind == "baseline" else ROUND_TRIP_SERVER)


def lineup(settings: Settings) -> list[ServerSpec]:
    """Every server of a row set: per runtime the baseline, the round trip and the gate on each process
    count; the reference (kong-pdk gevent's baseline) even when kong-pdk gevent is not among the
    runtimes; and the JavaScript peer."""
    chosen = runtimes(settings.runtimes, settings.modes)
    specs = [] if REFERENCE in chosen else [ServerSpec("baseline", REFERENCE)]
    for runtime in chosen:
        specs += [ServerSpec("baseline", runtime), ServerSpec("round_trip", runtime)]
        specs += [ServerSpec("gate", runtime, p) for p in settings.processes]
    if settings.js:
        specs.append(ServerSpec("baseline", PEER))
    return specs


# A row of the table: (runtime, path, the gate's processes)
RowKey = tuple[Runtime, str, int]
