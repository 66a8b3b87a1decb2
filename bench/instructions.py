"""``--instructions``: the user-space instructions a plugin server executes per request, counted by
valgrind's callgrind, a measure that does not move with the load of a shared machine.

CPU time per request spreads by 20 to 40% between runs here; the instructions a program executes do
not depend on what else runs. Each plugin server runs under ``valgrind --tool=callgrind
--instr-atstart=no --trace-children=yes``: uninstrumented (a few times slower, not fifty) through its
start and the first warm-up, then ``callgrind_control -i on`` starts counting, and every window is
bracketed by ``callgrind_control -z`` (zero) and ``-d`` (dump), whose ``summary:`` line is the count:
guest instructions only, neither the kernel's nor valgrind's own. A server of several processes is
summed over all of them (the acceptor too).

At 1 in flight the driver sends each message only once every thread of the server sleeps
(``Job.wait_idle``), so that every message finds the server waiting for it: a server that finds the
next message already there reads it without waiting, a shorter path, and which one it takes would
otherwise depend on who was quicker. At more in flight the server under valgrind is the bottleneck,
so messages queue for it; how many a turn of its event loop finds depends on timing, and the spread
of the windows shows how much. The servers run with ``PYTHONHASHSEED=0``, so that two runs hash alike.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.driver import Target
from bench.procs import (
    BASELINE_SERVER,
    GATE_SERVER,
    ROUND_TRIP_SERVER,
    BenchError,
    PluginServer,
    process_tree,
    short_dir,
)
from bench.runner import BROKE, PAYING, Bench, consumer, kong_config, mode_label, start_instance

START_TIMEOUT = 180.0  # seconds a server under valgrind may take to listen, or to start an instance
# Under valgrind a turn of the server's event loop at 64 in flight can take a second or more: a Redis
# reply that waits for it must not time out (the gate checks its deadlines from a timer of that loop).
READ_TIMEOUT_MS = 30_000
REWARM_REQUESTS = 50  # instrumented warm-up before each later window, at its concurrency
_SUMMARY = re.compile(rb"^summary: (\d+)$", re.M)


def valgrind_argv(out_dir: Path) -> list[str]:
    """The command prefix that runs a server under callgrind, counting nothing until told."""
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise BenchError(f"--instructions needs {tool} (apt-get install valgrind)")
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--trace-children=yes",  # the acceptor's server processes
        f"--callgrind-out-file={out_dir}/callgrind.out.%p",
        f"--log-file={out_dir}/valgrind.%p.log",
    ]


class Counted:
    """A plugin server under callgrind and the dumps it writes."""

    def __init__(self, server: PluginServer, out_dir: Path) -> None:
        self.server = server
        self.out_dir = out_dir

    def pids(self) -> list[int]:
        return process_tree(self.server.pid)

    def control(self, *args: str) -> None:
        for pid in self.pids():
            _control(pid, *args)

    def count(self, pids: list[int] | None = None) -> int:
        """Dump every process's counters, or those of ``pids`` (which zeroes them), and return the
        instructions since the last zero or dump."""
        total = 0
        for pid in self.pids() if pids is None else pids:
            before = set(self.out_dir.glob(f"callgrind.out.{pid}.*"))
            _control(pid, "-d")
            (dump,) = set(self.out_dir.glob(f"callgrind.out.{pid}.*")) - before
            found = _SUMMARY.search(dump.read_bytes())
            if found is None:
                raise BenchError(f"no summary in {dump.name}")
            total += int(found.group(1))
            dump.unlink()
        return total


def _control(pid: int, *args: str) -> None:
    proc = subprocess.run(
        ["callgrind_control", *args, str(pid)], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0 or "OK" not in proc.stdout:
        raise BenchError(f"callgrind_control {' '.join(args)} {pid}: {proc.stdout}{proc.stderr}".strip())


@dataclass
class InstructionCell:
    """One path at one concurrency: instructions per request in each of its windows."""

    mode: str
    concurrency: int
    path: str
    processes: int
    requests: int
    paced: bool  # each message sent once the server sleeps (1 in flight): see the module's docstring
    per_request: list[float] = field(default_factory=list)  # one per window
    errors: int = 0
    first_error: str | None = None
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.per_request) and self.errors == 0

    @property
    def median(self) -> float:
        return statistics.median(self.per_request) if self.per_request else float("nan")

    @property
    def spread(self) -> float:
        """(largest - smallest) / median of the windows."""
        if not self.per_request:
            return float("nan")
        return (max(self.per_request) - min(self.per_request)) / self.median

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "median": self.median, "spread": self.spread}


# (path, gate processes, server, target, account)
Plan = list[tuple[str, int, Counted, Target, str]]


@contextmanager
def _counted(argv: list[str], name: str, mode: str, out_dir: Path) -> Iterator[Counted]:
    """A server under callgrind, started without waiting for it to listen: see ``_start``."""
    server = PluginServer(
        [*valgrind_argv(out_dir), *argv],
        name,
        mode,
        start_timeout=START_TIMEOUT,
        wait=False,
        env={"PYTHONHASHSEED": "0"},
    )
    try:
        yield Counted(server, out_dir)
    finally:
        server.stop()


def instructions(bench: Bench) -> list[InstructionCell]:
    """Every path (and the gate on each process count) at each concurrency, ``repeat`` windows each,
    the paths taking turns; the servers of one mode and transport up at once."""
    s = bench.settings
    cells: list[InstructionCell] = []
    out_dir = short_dir("cgb-callgrind-")
    try:
        for mode in s.modes:
            for transport in s.transports:
                with ExitStack() as stack:
                    cells += _measure(bench, _start(bench, stack, mode, transport, out_dir), mode, transport)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return cells


def _start(bench: Bench, stack: ExitStack, mode: str, transport: str, out_dir: Path) -> Plan:
    """The baseline, the round trip and a gate per process count, under callgrind, each instance started."""
    baseline = stack.enter_context(_counted(BASELINE_SERVER, "baseline", mode, out_dir))
    round_trip = stack.enter_context(_counted(ROUND_TRIP_SERVER, "round-trip", mode, out_dir))
    gates = {
        p: stack.enter_context(
            _counted([*GATE_SERVER, "--processes", str(p)], f"credit-gate-{p}", mode, out_dir)
        )
        for p in bench.settings.processes
    }
    for counted in (baseline, round_trip, *gates.values()):
        counted.server.wait_listening()  # valgrind starts slowly: all at once, then wait
    base_config = kong_config(bench.baseline_fields, {}, f"baseline-{mode}")
    rt_config = bench.round_trip_config(f"round-trip-{mode}-{transport}", transport, READ_TIMEOUT_MS)
    plan: Plan = [
        (
            "baseline",
            1,
            baseline,
            start_instance(baseline.server, "baseline", base_config, START_TIMEOUT),
            PAYING,
        ),
        (
            "round_trip",
            1,
            round_trip,
            start_instance(round_trip.server, "baseline", rt_config, START_TIMEOUT),
            PAYING,
        ),
    ]
    for p, gate in gates.items():
        config = bench.gate_config(f"gate-{mode}-{transport}", transport, READ_TIMEOUT_MS)
        target = start_instance(gate.server, "credit-gate", config, START_TIMEOUT)
        plan += [("allowed", p, gate, target, PAYING), ("refused", p, gate, target, BROKE)]
    return plan


def _measure(bench: Bench, plan: Plan, mode: str, transport: str) -> list[InstructionCell]:
    s = bench.settings
    requests = s.instruction_requests
    timeout = max(s.timeout, requests * 0.5)
    # Uninstrumented warm-up, then counting on (its first requests are thrown away with the zero).
    for _path, _p, _server, target, account in plan:
        bench.driver.run([target], consumer(account), s.warmup, max(s.concurrencies), timeout)
    for counted in dict.fromkeys(entry[2] for entry in plan):
        counted.control("-i", "on")
    cells: list[InstructionCell] = []
    for concurrency in s.concurrencies:
        paced = concurrency == 1
        row = {
            (path, p): InstructionCell(mode_label(mode, transport, p), concurrency, path, p, requests, paced)
            for path, p, _, _, _ in plan
        }
        for _turn in range(s.repeat):
            for path, p, counted, target, account in plan:
                cell = row[(path, p)]
                who = consumer(account)
                idle = counted.server.pid if paced else 0
                bench.driver.run([target], who, min(REWARM_REQUESTS, s.warmup), concurrency, timeout, idle)
                counted.control("-z")
                run = bench.driver.run([target], who, requests, concurrency, timeout, idle)
                total = counted.count()
                for status, n in run.statuses.items():
                    cell.statuses[status] = cell.statuses.get(status, 0) + n
                cell.errors += run.errors + (requests - run.completed)
                cell.first_error = cell.first_error or run.first_error
                if run.completed:
                    cell.per_request.append(total / run.completed)
                bench.progress(
                    f"instructions {cell.mode:9} c={concurrency:<3} {path:10} "
                    f"{total / max(1, run.completed):12,.0f} per request  statuses {run.statuses}"
                )
        cells += row.values()
    return cells
