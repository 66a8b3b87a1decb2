"""The scenarios: the side-by-side table, ``--long`` (RSS over many requests) and ``--overspend``.

A measured window is a fixed number of requests after a warm-up at the same concurrency. Around it
the runner reads the plugin server's CPU (``/proc/<pid>/stat``, the server and its children) and RSS
(``/proc/<pid>/status``), Redis's own counters (``INFO stats commandstats``), the redis-server's CPU
and the driver's CPU, so every per-request figure is a delta divided by the requests of the window.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import js_peer
from bench.driver import LoadDriver, Run, Target, rpc_call
from bench.lineup import SERVER_STARTS, RowKey, ServerSpec, Settings, lineup, mode_label
from bench.procs import (
    BASELINE_SERVER,
    GATE_SERVER,
    KONG_JS,
    ROUND_TRIP_SERVER,
    PluginServer,
    RedisServer,
    Runtime,
    cpu_seconds,
    dump,
    rss_kib,
    runtimes,
)
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.kong.processes import PROCESSES_FLAG
from creditgate.ops.admin import Admin

PLAN = "bench-paid"
PAYING = "bench-paying"  # a huge prepaid balance: every request is allowed
BROKE = "bench-broke"  # balance 0 on a prepaid plan without allowance: insufficient_credit
HUGE_BALANCE = 10**15
ROUTE_ID = "bench-route"


def consumer(account: str) -> dict[str, Any]:
    """A consumer entity as Kong hands it over (``kong.client.get_consumer``)."""
    return {"id": account, "username": account, "custom_id": None, "created_at": 1_767_225_600, "type": 0}


def fill(fields: list[dict[str, Any]], given: dict[str, Any]) -> dict[str, Any]:
    """Kong's processing of a config record: every schema field, defaults filled, unset ones null."""
    out: dict[str, Any] = {}
    for entry in fields:
        ((name, spec),) = entry.items()
        nested = spec.get("fields") if spec.get("type") == "record" else None
        value = given.get(name, spec.get("default"))
        if nested is not None:
            value = fill(nested, value or {})
        out[name] = value
    return out


def kong_config(fields: list[dict[str, Any]], given: dict[str, Any], plugin_id: str) -> str:
    """``plugin.StartInstance``'s Config: the filled record plus what Kong's plugins iterator adds."""
    config = fill(fields, given)
    config.update({"route_id": ROUTE_ID, "__plugin_id": plugin_id, "__seq__": 1})
    return json.dumps(config)


def start_instance(server: PluginServer, name: str, config: str, timeout: float = 10.0) -> Target:
    """A plugin entity on ``server``; each driver process starts its own instance of it, as each nginx
    worker does. Started once here too, so that a config the server refuses fails the run at once."""
    rpc_call(server.socket_path, "plugin.StartInstance", {"Name": name, "Config": config}, timeout)
    return Target(server.socket_path, name, config)


@dataclass
class Cell:
    """One measured window: a plugin path at a concurrency in a mode."""

    mode: str
    concurrency: int
    path: str
    requests: int
    completed: int
    errors: int
    first_error: str | None
    timed_out: bool
    statuses: dict[int, int]
    refusal_reason: str | None
    pdk_methods: list[str]
    wall_seconds: float
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    server_cpu_us: float
    driver_cpu_us: float
    redis_cpu_us: float
    pdk_round_trips: float
    redis_round_trips: float
    redis_writes: float
    redis_reads: float
    redis_script_calls: float
    redis_setup_round_trips: float
    redis_connections: int
    redis_commands: dict[str, float]
    redis_usec: dict[str, float]
    rss_before_kib: int
    rss_after_kib: int
    skipped: bool = False
    # This path's window CPU over the baseline's window of the same turn, one per turn: adjacent
    # windows share the machine's state, so their ratio is steadier than a ratio of medians.
    turn_ratios: list[float] = field(default_factory=list)
    processes: int = 1  # the gate server's processes (the baseline servers have one)
    runtime: str = ""  # credit-gate, kong-pdk or kong-js-pdk (procs.Runtime)
    kong_pdk_mode: str | None = None  # kong-pdk's mode (threads, gevent) on its runtime
    transport: str = "tcp"  # how the row set's gate reaches Redis
    # Each turn's window, server CPU µs per request (NaN where it did not complete): rows of one row set
    # are paired turn by turn (report.paired_ratio), as turn_ratios pairs them with the baseline.
    turn_cpu_us: list[float] = field(default_factory=list)

    def place(self, runtime: Runtime, transport: str, processes: int) -> Cell:
        """Tag the window with what ran it."""
        self.runtime, self.kong_pdk_mode = runtime.name, runtime.mode
        self.transport, self.processes = transport, processes
        return self

    @property
    def ok(self) -> bool:
        return (
            not self.skipped and not self.timed_out and self.errors == 0 and self.completed == self.requests
        )


def _reason(run: Run) -> str | None:
    if run.exit_sample is None or len(run.exit_sample) < 2:
        return None
    body = run.exit_sample[1]
    try:
        reason = json.loads(body).get("reason")
    except (TypeError, ValueError, AttributeError):
        return None
    return reason if isinstance(reason, str) else None


def failed_cell(mode: str, concurrency: int, path: str, why: str, *, timed_out: bool = False) -> Cell:
    """A window that did not run (its server is wedged or gone) or whose warm-up got no answer."""
    nan = float("nan")
    return Cell(
        mode, concurrency, path, 0, 0, 0, why, timed_out, {}, None, [], nan, nan, nan, nan, nan, nan, nan,
        nan, nan, nan, nan, nan, nan, 0, {}, {}, 0, 0, skipped=True,
    )  # fmt: skip


class Bench:
    """One Redis, one set of driver processes, and the scenarios run against them."""

    def __init__(self, settings: Settings, progress: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
        self.redis = RedisServer()
        self.redis_settings = RedisSettings(
            host="127.0.0.1",
            port=self.redis.port,
            connect_timeout=1_000,
            read_timeout=settings.redis_read_timeout_ms,
        )
        self.admin = Admin.connect(self.redis_settings)
        self.driver = LoadDriver(settings.drivers)
        self.gate_fields, self.gate_phases = dump(GATE_SERVER)
        self.baseline_fields, _ = dump(BASELINE_SERVER)
        self.round_trip_fields, _ = dump(ROUND_TRIP_SERVER)
        if self.gate_phases != ["access"]:
            # Kong would also run these for every request; the driver plays the access phase only.
            self.progress(f"note: credit-gate reports phases {self.gate_phases}; only access is driven")
        self._seed()

    def close(self) -> None:
        self.driver.close()
        self.admin.close()
        self.redis.stop()

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _seed(self) -> None:
        """Through the operators' API, as a billing integration would."""
        self.admin.apply_plan(Plan(PLAN, period=Period.MONTH, allowance=0, prepaid=True))
        start = self.admin.now() - 60
        self.admin.subscribe(PAYING, PLAN, starts_at=start)
        self.admin.grant(PAYING, HUGE_BALANCE, note="benchmark")
        self.admin.subscribe(BROKE, PLAN, starts_at=start)

    def gate_config(self, plugin_id: str, transport: str = "tcp", read_timeout_ms: int | None = None) -> str:
        redis: dict[str, Any] = {
            "host": self.redis_settings.host,
            "port": self.redis_settings.port,
            "connect_timeout": self.redis_settings.connect_timeout,
            "read_timeout": read_timeout_ms or self.redis_settings.read_timeout,
        }
        if transport == "unix":
            redis["socket_path"] = str(self.redis.unix_socket)
        fields: dict[str, Any] = {"cost": self.settings.cost, "redis": redis}
        if self.settings.witness:
            fields["bypass_witness"] = True
        return kong_config(self.gate_fields, fields, plugin_id)

    def round_trip_config(
        self, plugin_id: str, transport: str = "tcp", read_timeout_ms: int | None = None
    ) -> str:
        given: dict[str, Any] = {
            "redis_port": self.redis.port,
            "redis_read_timeout": read_timeout_ms or self.redis_settings.read_timeout,
        }
        if transport == "unix":
            given["redis_socket"] = str(self.redis.unix_socket)
        return kong_config(self.round_trip_fields, given, plugin_id)

    def instance_config(self, spec: ServerSpec, transport: str, read_timeout_ms: int | None = None) -> str:
        """``plugin.StartInstance``'s Config for ``spec``'s plugin in a row set."""
        plugin_id = f"{spec.name}-{transport}"
        if spec.kind == "gate":
            return self.gate_config(plugin_id, transport, read_timeout_ms)
        if spec.kind == "round_trip":
            return self.round_trip_config(plugin_id, transport, read_timeout_ms)
        return kong_config([] if spec.runtime.name == KONG_JS else self.baseline_fields, {}, plugin_id)

    def launch(
        self,
        stack: contextlib.ExitStack,
        specs: list[ServerSpec],
        prefix: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        start_timeout: float = SERVER_STARTS,
    ) -> dict[ServerSpec, PluginServer]:
        """Every server of ``specs`` (under ``prefix``, a valgrind command), started at once, then
        waited for; stopped when ``stack`` closes."""
        started: dict[ServerSpec, PluginServer] = {}
        for spec in specs:
            argv = [*prefix, *spec.argv()]
            server = PluginServer(argv, spec.name, spec.runtime, start_timeout, wait=False, env=env)
            stack.callback(server.stop)
            started[spec] = server
        for server in started.values():
            server.wait_listening()
        return started

    @contextmanager
    def servers(
        self, argv: list[str], name: str, runtime: Runtime, count: int = 1, processes: int | None = None
    ) -> Iterator[list[PluginServer]]:
        started: list[PluginServer] = []
        flags = [] if processes is None else [PROCESSES_FLAG, str(processes)]
        try:
            for _ in range(count):
                started.append(PluginServer([*argv, *flags], name, runtime))
            yield started
        finally:
            for server in started:
                server.stop()

    def window_timeout(self, requests: int) -> float:
        """A window's bound: the configured seconds, or more for long windows (at least 100 req/s)."""
        return max(self.settings.timeout, requests / 100)

    # One window

    def measure(
        self,
        server: PluginServer,
        targets: list[Target],
        account: str | None,
        *,
        mode: str,
        path: str,
        requests: int,
        concurrency: int,
        warmup: int,
    ) -> Cell:
        who = consumer(account) if account else None
        if warmup:
            warm = self.driver.run(targets, who, warmup, concurrency, self.window_timeout(warmup))
            if warm.timed_out or warm.completed == 0:
                why = f"no answer during the warm-up ({warm.first_error or 'timed out'})"
                return failed_cell(mode, concurrency, path, why, timed_out=warm.timed_out)
        rss_before = rss_kib(server.pid)
        cpu_before = cpu_seconds(server.pid)
        redis_cpu_before = cpu_seconds(self.redis.pid)
        redis_before = self.redis.stats()
        run = self.driver.run(targets, who, requests, concurrency, self.window_timeout(requests))
        redis_delta = self.redis.stats().since(redis_before)
        redis_cpu = cpu_seconds(self.redis.pid) - redis_cpu_before
        cpu = cpu_seconds(server.pid) - cpu_before
        rss_after = rss_kib(server.pid)
        n = max(1, run.completed)
        return Cell(
            mode=mode,
            concurrency=concurrency,
            path=path,
            requests=requests,
            completed=run.completed,
            errors=run.errors,
            first_error=run.first_error,
            timed_out=run.timed_out,
            statuses=run.statuses,
            refusal_reason=_reason(run),
            pdk_methods=[method for method, _ in run.sample_calls],
            wall_seconds=run.wall_seconds,
            requests_per_second=run.completed / run.wall_seconds if run.wall_seconds > 0 else float("nan"),
            p50_ms=run.percentile_ms(0.50),
            p99_ms=run.percentile_ms(0.99),
            server_cpu_us=cpu / n * 1e6,
            driver_cpu_us=run.driver_cpu_seconds / n * 1e6,
            redis_cpu_us=redis_cpu / n * 1e6,
            pdk_round_trips=run.round_trips / n,
            # Commands the plugin sent: the charge scripts plus connection set-up. Under gevent the charges
            # of concurrent requests share a pipelined connection, so Redis may write several replies at
            # once: its count of writes (kept in redis_writes) is then below the count of commands.
            redis_round_trips=(redis_delta.script_calls + redis_delta.setup_round_trips) / n,
            redis_writes=redis_delta.writes / n,
            redis_reads=redis_delta.reads / n,
            redis_script_calls=redis_delta.script_calls / n,
            redis_setup_round_trips=redis_delta.setup_round_trips / n,
            redis_connections=redis_delta.connections,
            redis_commands={k: v / n for k, v in redis_delta.calls.items()},
            redis_usec={k: v / n for k, v in redis_delta.usec.items()},
            rss_before_kib=rss_before,
            rss_after_kib=rss_after,
        )

    # The table

    def table(self) -> list[Cell]:
        """Per Redis transport, one row set: every server of ``lineup`` up at once, so that every
        row's windows take turns with the reference's and the baselines' and their ratios come from
        adjacent windows."""
        s = self.settings
        specs = lineup(s)
        cells: list[Cell] = []
        for transport in s.transports:
            with contextlib.ExitStack() as stack:
                servers = self.launch(stack, specs)
                plan: dict[RowKey, tuple[PluginServer, Target, str]] = {}
                for spec, server in servers.items():
                    target = start_instance(server, spec.plugin, self.instance_config(spec, transport))
                    for path in spec.paths:
                        account = BROKE if path == "refused" else PAYING
                        plan[(spec.runtime, path, spec.processes)] = (server, target, account)
                for concurrency in s.concurrencies:
                    cells += self._turns(plan, transport, concurrency)
        return cells

    def _turns(
        self, plan: dict[RowKey, tuple[PluginServer, Target, str]], transport: str, concurrency: int
    ) -> list[Cell]:
        """The rows take turns, --repeat times; each row's median window is kept, so that a burst of
        noise on the shared CPUs does not decide a ratio."""
        s = self.settings
        broken: dict[str, str] = {}
        runs: dict[RowKey, list[Cell]] = {key: [] for key in plan}
        turn_cpu: dict[RowKey, list[float]] = {key: [math.nan] * s.repeat for key in plan}
        for turn in range(s.repeat):
            for key, (server, target, account) in plan.items():
                runtime, path, processes = key
                if server.name in broken or not server.running():
                    continue
                warmup = s.warmup if turn == 0 else min(s.warmup, 300)
                if turn == 0 and runtime.name == KONG_JS:
                    warmup = max(warmup, js_peer.WARMUP)  # measured warm: V8 compiles after a while
                cell = self.measure(
                    server,
                    [target],
                    account,
                    mode=mode_label(runtime, transport, processes),
                    path=path,
                    requests=s.requests,
                    concurrency=concurrency,
                    warmup=warmup,
                ).place(runtime, transport, processes)
                runs[key].append(cell)
                if cell.ok:
                    turn_cpu[key][turn] = cell.server_cpu_us
                self.progress(_progress_line(cell))
                if cell.timed_out:
                    broken[server.name] = f"skipped: the {server.name} server stopped answering"
                    self.progress(f"  {server.name} server log tail:\n{server.log_text()[-2000:]}")
        cells: list[Cell] = []
        for key, (server, _, _) in plan.items():
            runtime, path, processes = key
            measured = runs[key]
            base_runs = runs.get((runtime, "baseline", 1), [])
            if measured and not any(c.timed_out for c in measured):
                kept = sorted(measured, key=lambda c: c.server_cpu_us)[len(measured) // 2]
                if path != "baseline" and len(base_runs) == len(measured):
                    kept.turn_ratios = [
                        c.server_cpu_us / b.server_cpu_us
                        for c, b in zip(measured, base_runs, strict=True)
                        if c.ok and b.ok and b.server_cpu_us > 0
                    ]
                kept.turn_cpu_us = turn_cpu[key]
                cells.append(kept)
            elif measured:
                cells.append(next(c for c in measured if c.timed_out))
            else:
                why = broken.get(server.name, "the plugin server exited")
                label = mode_label(runtime, transport, processes)
                cells.append(failed_cell(label, concurrency, path, why).place(runtime, transport, processes))
        return cells

    # --long

    def long(self) -> list[LongResult]:
        """RSS over many requests: the gate's allowed and refused paths, and the baseline for
        comparison (what the runtime itself keeps), each on a fresh server after a warm-up, per runtime."""
        s = self.settings
        results: list[LongResult] = []
        for runtime in runtimes(s.runtimes, s.modes):
            with (
                self.servers(GATE_SERVER, "credit-gate", runtime, processes=max(s.processes)) as (gate,),
                self.servers(BASELINE_SERVER, "baseline", runtime) as (baseline,),
            ):
                gate_target = start_instance(gate, "credit-gate", self.gate_config(f"long-{runtime.slug}"))
                base_target = start_instance(
                    baseline,
                    "baseline",
                    kong_config(self.baseline_fields, {}, f"long-baseline-{runtime.slug}"),
                )
                plan = (
                    ("baseline", baseline, base_target, PAYING),
                    ("allowed", gate, gate_target, PAYING),
                    ("refused", gate, gate_target, BROKE),
                )
                for path, server, target, account in plan:
                    # Two halves, so that a climb to a plateau can be told from a steady leak.
                    halves = [
                        self.measure(
                            server,
                            [target],
                            account,
                            mode=mode_label(runtime, "tcp", max(s.processes)),
                            path=path,
                            requests=count,
                            concurrency=s.long_concurrency,
                            warmup=warmup,
                        ).place(runtime, "tcp", max(s.processes))
                        for count, warmup in (
                            (s.long_requests // 2, max(s.warmup, 2_000)),
                            (s.long_requests - s.long_requests // 2, 0),
                        )
                    ]
                    result = LongResult(*halves)
                    results.append(result)
                    before, after = result.cell.rss_before_kib / 1024, result.second.rss_after_kib / 1024
                    self.progress(
                        f"long {runtime.label:15} {path:8} {result.requests} requests: "
                        f"RSS {before:.1f} -> {after:.1f} MiB "
                        f"({result.growth_mb:+.2f} MB, second half {result.second_half_growth_mb:+.2f} MB)"
                    )
        return results

    # --overspend

    def overspend(self) -> list[OverspendResult]:
        s = self.settings
        results: list[OverspendResult] = []
        for runtime in runtimes(s.runtimes, s.modes):
            account = f"bench-overspend-{runtime.slug}"
            self.admin.subscribe(account, PLAN, starts_at=self.admin.now() - 60)
            self.admin.grant(account, s.overspend_balance, note="overspend scenario")
            with self.servers(
                GATE_SERVER, "credit-gate", runtime, s.overspend_servers, processes=max(s.processes)
            ) as servers:
                # One plugin entity, so one instance per server, as every Kong node would start.
                targets = [start_instance(g, "credit-gate", self.gate_config("overspend")) for g in servers]
                run = self.driver.run(
                    targets,
                    consumer(account),
                    s.overspend_requests,
                    s.overspend_concurrency,
                    self.window_timeout(s.overspend_requests),
                )
            state = self.admin.account(account)
            result = OverspendResult(
                mode=mode_label(runtime, "tcp", max(s.processes)),
                servers=s.overspend_servers,
                concurrency=s.overspend_concurrency,
                balance=s.overspend_balance,
                requests=s.overspend_requests,
                completed=run.completed,
                errors=run.errors,
                first_error=run.first_error,
                statuses=run.statuses,
                allowed=run.statuses.get(200, 0),
                final_balance=state.balance,
                ledger_ok=self.admin.verify_ledger(account).ok,
            )
            results.append(result)
            self.progress(
                f"overspend {runtime.label:15} balance {result.balance}, {result.completed} requests "
                f"({result.concurrency} in flight, {result.servers} servers): allowed {result.allowed}, "
                f"final balance {result.final_balance}, ledger {'ok' if result.ledger_ok else 'MISMATCH'}"
            )
        return results


@dataclass
class LongResult:
    """A long run on one path, measured as two consecutive halves."""

    cell: Cell  # the first half
    second: Cell

    @property
    def requests(self) -> int:
        return self.cell.completed + self.second.completed

    @property
    def ok(self) -> bool:
        return self.cell.ok and self.second.ok

    @property
    def growth_mb(self) -> float:
        return (self.second.rss_after_kib - self.cell.rss_before_kib) * 1024 / 1e6

    @property
    def second_half_growth_mb(self) -> float:
        return (self.second.rss_after_kib - self.second.rss_before_kib) * 1024 / 1e6

    def to_json(self) -> dict[str, Any]:
        return {
            "first_half": asdict(self.cell),
            "second_half": asdict(self.second),
            "requests": self.requests,
            "rss_growth_mb": self.growth_mb,
            "second_half_rss_growth_mb": self.second_half_growth_mb,
        }


@dataclass
class OverspendResult:
    mode: str
    servers: int
    concurrency: int
    balance: int
    requests: int
    completed: int
    errors: int
    first_error: str | None
    statuses: dict[int, int]
    allowed: int
    final_balance: int
    ledger_ok: bool

    @property
    def ok(self) -> bool:
        return self.allowed == self.balance and self.final_balance == 0 and self.errors == 0


def _progress_line(cell: Cell) -> str:
    flag = "" if cell.ok else f"  !! {cell.first_error or 'incomplete'}"
    return (
        f"{cell.mode:28} c={cell.concurrency:<3} {cell.path:10} {cell.requests_per_second:8.0f} req/s  "
        f"p50 {cell.p50_ms:6.2f} ms  p99 {cell.p99_ms:6.2f} ms  server {cell.server_cpu_us:6.0f} us/req  "
        f"statuses {cell.statuses}{flag}"
    )
