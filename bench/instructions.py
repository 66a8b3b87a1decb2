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
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import js_peer
from bench.driver import Target
from bench.lineup import ServerSpec, lineup, mode_label
from bench.procs import KONG_JS, BenchError, PluginServer, Runtime, process_tree, short_dir
from bench.runner import BROKE, PAYING, Bench, consumer, start_instance

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

    mode: str  # the row set's label (runner.mode_label)
    concurrency: int
    path: str
    processes: int
    requests: int
    paced: bool  # each message sent once the server sleeps (1 in flight): see the module's docstring
    per_request: list[float] = field(default_factory=list)  # one per window
    errors: int = 0
    first_error: str | None = None
    statuses: dict[int, int] = field(default_factory=dict)
    runtime: str = ""  # credit-gate, kong-pdk or kong-js-pdk
    kong_pdk_mode: str | None = None
    transport: str = "tcp"

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


# (runtime, path, gate processes, server, target, account)
Plan = list[tuple[Runtime, str, int, Counted, Target, str]]


def instructions(bench: Bench) -> list[InstructionCell]:
    """Every row of the table's row set (``lineup``) at each concurrency, ``repeat`` windows each, the
    rows taking turns; the servers of one transport up at once."""
    s = bench.settings
    cells: list[InstructionCell] = []
    out_dir = short_dir("cgb-callgrind-")
    try:
        for transport in s.transports:
            with ExitStack() as stack:
                cells += _measure(bench, _start(bench, stack, transport, out_dir), transport)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return cells


def _start(bench: Bench, stack: ExitStack, transport: str, out_dir: Path) -> Plan:
    """Every server of the row set under callgrind (``PYTHONHASHSEED=0``, so that two runs hash alike),
    all started at once, each instance started."""
    specs: list[ServerSpec] = lineup(bench.settings)
    servers = bench.launch(
        stack,
        specs,
        prefix=tuple(valgrind_argv(out_dir)),
        env={"PYTHONHASHSEED": "0"},
        start_timeout=START_TIMEOUT,
    )
    plan: Plan = []
    for spec, server in servers.items():
        config = bench.instance_config(spec, transport, READ_TIMEOUT_MS)
        target = start_instance(server, spec.plugin, config, START_TIMEOUT)
        counted = Counted(server, out_dir)
        for path in spec.paths:
            account = BROKE if path == "refused" else PAYING
            plan.append((spec.runtime, path, spec.processes, counted, target, account))
    return plan


def _measure(bench: Bench, plan: Plan, transport: str) -> list[InstructionCell]:
    s = bench.settings
    requests = s.instruction_requests
    # Uninstrumented warm-up (V8 compiles the JS server's code after a while: it gets more), then
    # counting on (its first requests are thrown away with the zero).
    for runtime, _path, _p, _server, target, account in plan:
        warmup = max(s.warmup, js_peer.WARMUP) if runtime.name == KONG_JS else s.warmup
        timeout = max(s.timeout, warmup * 0.5)
        bench.driver.run([target], consumer(account), warmup, max(s.concurrencies), timeout)
    for counted in dict.fromkeys(entry[3] for entry in plan):
        counted.control("-i", "on")
    timeout = max(s.timeout, requests * 0.5)
    cells: list[InstructionCell] = []
    for concurrency in s.concurrencies:
        paced = concurrency == 1
        row = {
            (runtime, path, p): InstructionCell(
                mode_label(runtime, transport, p),
                concurrency,
                path,
                p,
                requests,
                paced,
                runtime=runtime.name,
                kong_pdk_mode=runtime.mode,
                transport=transport,
            )
            for runtime, path, p, _, _, _ in plan
        }
        for _turn in range(s.repeat):
            for runtime, path, p, counted, target, account in plan:
                cell = row[(runtime, path, p)]
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
                    f"instructions {cell.mode:28} c={concurrency:<3} {path:10} "
                    f"{total / max(1, run.completed):12,.0f} per request  statuses {run.statuses}"
                )
        cells += row.values()
    return cells
