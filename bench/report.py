"""The benchmark's output: markdown tables ready for the README, the target checks, and the JSON."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.compare import (
    Verdict,
    counted_reference_ratio,
    is_reference,
    reference_ratio,
    runtime_lines,
    runtime_rows,
    runtime_verdicts,
)
from bench.instructions import InstructionCell
from bench.lineup import GATE_PATHS, Settings
from bench.runner import Cell, LongResult, OverspendResult

LABELS = {
    "baseline": "baseline",
    "round_trip": "baseline + the charge's Redis round trip",
    "allowed": "credit-gate allowed",
    "refused": "credit-gate refused (402)",
}

# The targets the issue sets, checked from what this run measured.
CPU_RATIO_TARGET = 1.3
PDK_ALLOWED_TARGET = 4
PDK_REFUSED_TARGET = 3
RSS_GROWTH_TARGET_MB = 10.0
LONG_TARGET_REQUESTS = 100_000


def _num(value: float, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def _precise(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}x"


def _plugin(cell: Cell | InstructionCell) -> str:
    return LABELS[cell.path] + (" (reference)" if is_reference(cell) else "")


def _baseline(cells: Sequence[Cell], cell: Cell) -> Cell | None:
    return next(
        (
            c
            for c in cells
            if c.mode == cell.mode and c.concurrency == cell.concurrency and c.path == "baseline"
        ),
        None,
    )


def cpu_ratio(cells: Sequence[Cell], cell: Cell) -> float:
    """Server CPU per request over the baseline's: the median of the turns' ratios, when taken in turns."""
    if cell.turn_ratios:
        return statistics.median(cell.turn_ratios)
    base = _baseline(cells, cell)
    if base is None or not base.ok or not cell.ok or base.server_cpu_us <= 0:
        return float("nan")
    return cell.server_cpu_us / base.server_cpu_us


def best_mode(cells: Sequence[Cell]) -> tuple[str | None, dict[str, float]]:
    """The mode with the least server CPU per allowed request (mean over the concurrencies run), among
    the modes whose every window completed; and that mean for every mode."""
    means: dict[str, float] = {}
    for mode in dict.fromkeys(c.mode for c in cells):
        allowed = [c for c in cells if c.mode == mode and c.path == "allowed"]
        if allowed and all(c.ok for c in cells if c.mode == mode):
            means[mode] = sum(c.server_cpu_us for c in allowed) / len(allowed)
    return (min(means, key=means.__getitem__) if means else None), means


def _family(cell: Cell | InstructionCell) -> str:
    """The label without its process count: the rows that differ only by the gate's processes."""
    suffix = f", {cell.processes} process{'es' if cell.processes > 1 else ''}"
    return cell.mode.replace(suffix, "", 1)


@dataclass(frozen=True)
class ProcessRow:
    """The allowed path with the gate on ``processes`` server processes, against one process."""

    family: str
    concurrency: int
    processes: int
    cell: Cell
    cpu_vs_one: float  # this window's server CPU per request over the 1-process window's
    normalized_vs_one: float  # the same, each first divided by its own turns' baseline windows


def process_rows(cells: Sequence[Cell]) -> list[ProcessRow]:
    rows: list[ProcessRow] = []
    allowed = [c for c in cells if c.path == "allowed" and c.ok]
    for cell in allowed:
        one = next(
            (
                c
                for c in allowed
                if c.processes == 1 and _family(c) == _family(cell) and c.concurrency == cell.concurrency
            ),
            None,
        )
        if one is None:
            continue
        rows.append(
            ProcessRow(
                _family(cell),
                cell.concurrency,
                cell.processes,
                cell,
                cell.server_cpu_us / one.server_cpu_us,
                cpu_ratio(cells, cell) / cpu_ratio(cells, one),
            )
        )
    return rows


PROCESS_TARGET_CONCURRENCIES = (16, 64)


def _counted_peer(
    cells: Sequence[InstructionCell], cell: InstructionCell, path: str, processes: int | None = None
) -> InstructionCell | None:
    """The cell of ``path`` in ``cell``'s family at its concurrency (on ``processes``, if given)."""
    return next(
        (
            c
            for c in cells
            if c.path == path
            and c.ok
            and c.concurrency == cell.concurrency
            and _family(c) == _family(cell)
            and (processes is None or c.processes == processes)
        ),
        None,
    )


def counted_ratio(
    cells: Sequence[InstructionCell], cell: InstructionCell, path: str, processes: int | None = None
) -> float:
    """``cell``'s instructions per request over those of ``path`` (the baseline, the gate on 1 process)."""
    other = _counted_peer(cells, cell, path, processes)
    return cell.median / other.median if other is not None and cell.ok else float("nan")


def over_floor(cells: Sequence[InstructionCell], cell: InstructionCell) -> float:
    """Instructions per request over the baseline plus the round trip's: the gate's own logic."""
    floor = _counted_peer(cells, cell, "round_trip")
    return cell.median - floor.median if floor is not None and cell.ok else float("nan")


def verdicts(
    cells: Sequence[Cell],
    longs: Sequence[LongResult],
    overspends: Sequence[OverspendResult],
    counted: Sequence[InstructionCell] = (),
) -> list[Verdict]:
    out: list[Verdict] = []
    if cells:
        mode, means = best_mode(cells)

        def ratios_of(label: str, path: str = "allowed") -> list[float]:
            return [cpu_ratio(cells, c) for c in cells if c.mode == label and c.path == path]

        ratios = ratios_of(mode) if mode else []
        # Every complete mode, the best first: the verdict is the best's, the others are shown too.
        measured = (
            "; ".join(
                f"{label}: " + ", ".join(f"{r:.3f}x" for r in ratios_of(label))
                for label in sorted(means, key=means.__getitem__)
            )
            + " (per concurrency)"
            if mode
            else "no complete mode"
        )
        # The round trip's servers are single processes: the row of the best mode's family.
        family = next((_family(c) for c in cells if c.mode == mode and c.path == "allowed"), None)
        floor = [cpu_ratio(cells, c) for c in cells if c.path == "round_trip" and _family(c) == family]
        if floor:
            # What the one Redis round trip costs by itself, without the gate's logic around it.
            measured += f"; {mode}, the round trip alone: " + ", ".join(f"{r:.3f}x" for r in floor)
        out.append(
            Verdict(
                f"server CPU per allowed request <= {CPU_RATIO_TARGET}x the baseline's, best mode",
                measured,
                bool(ratios) and all(r <= CPU_RATIO_TARGET for r in ratios),
            )
        )
        gate = [c for c in cells if c.path in GATE_PATHS and not c.skipped]
        steady = [c.redis_round_trips - c.redis_setup_round_trips for c in gate]
        setups = sum(round(c.redis_setup_round_trips * c.completed) for c in gate)
        measured = ", ".join(sorted({f"{s:.3f}" for s in steady})) + " (all gate windows)"
        if setups:
            measured += (
                f"; plus {setups} set-up round trips of the {sum(c.redis_connections for c in gate)} "
                "Redis connections the server opened during the windows (HELLO, and error replies)"
            )
        out.append(
            Verdict(
                "exactly 1 Redis command (round trip) per allowed or refused request",
                measured,
                bool(gate) and all(c.ok and math.isclose(s, 1.0) for c, s in zip(gate, steady, strict=True)),
            )
        )
        allowed = [c for c in gate if c.path == "allowed"]
        refused = [c for c in gate if c.path == "refused"]
        worst_allowed = max((c.pdk_round_trips for c in allowed), default=float("nan"))
        worst_refused = max((c.pdk_round_trips for c in refused), default=float("nan"))
        out.append(
            Verdict(
                f"<= {PDK_ALLOWED_TARGET} PDK round trips per allowed request, "
                f"<= {PDK_REFUSED_TARGET} per refused (HandleEvent included)",
                f"allowed {worst_allowed:.2f}, refused {worst_refused:.2f}",
                worst_allowed <= PDK_ALLOWED_TARGET and worst_refused <= PDK_REFUSED_TARGET,
            )
        )
        many = [r for r in process_rows(cells) if r.processes > 1]
        if many:
            judged = [r for r in many if r.concurrency in PROCESS_TARGET_CONCURRENCIES]
            out.append(
                Verdict(
                    "server CPU per allowed request with several processes <= 1 process's, "
                    "16 and 64 in flight (each against its own turns' baseline)",
                    "; ".join(
                        f"{r.family}, {r.processes} processes, {r.concurrency} in flight: "
                        f"{r.normalized_vs_one:.2f}x ({r.cpu_vs_one:.2f}x unnormalized)"
                        for r in many
                    ),
                    all(r.normalized_vs_one <= 1.0 for r in judged) if judged else None,
                    "16/64 not run",
                )
            )
    several = [cell for cell in counted if cell.path == "allowed" and cell.processes > 1]
    if several:
        against_one = [(cell, counted_ratio(counted, cell, "allowed", 1)) for cell in several]
        at_load = [x for cell, x in against_one if cell.concurrency in PROCESS_TARGET_CONCURRENCIES]
        out.append(
            Verdict(
                "instructions per allowed request with several processes <= 1 process's, 16 and 64 in flight",
                "; ".join(
                    f"{_family(cell)}, {cell.processes} processes, {cell.concurrency} in flight: {x:.3f}x "
                    f"(windows spread {cell.spread * 100:.1f}%)"
                    for cell, x in against_one
                ),
                all(x <= 1.0 for x in at_load) if at_load else None,
                "16/64 not run",
            )
        )
    out += runtime_verdicts(cells, counted)
    rss_target = f"RSS growth < {RSS_GROWTH_TARGET_MB:.0f} MB over {LONG_TARGET_REQUESTS:,} requests"
    if longs:
        gate_runs = [r for r in longs if r.cell.path != "baseline"]
        growth = ", ".join(
            f"{r.cell.mode} {r.cell.path} {r.growth_mb:+.1f} MB (second half {r.second_half_growth_mb:+.1f})"
            for r in gate_runs
        )
        passed: bool | None = all(r.ok and r.growth_mb < RSS_GROWTH_TARGET_MB for r in gate_runs)
        if longs[0].requests < LONG_TARGET_REQUESTS:
            growth += f" over {longs[0].requests:,} requests"
            passed = None if passed else False
        out.append(Verdict(rss_target, growth, passed, "too short to tell"))
    else:
        out.append(Verdict(rss_target, "run --long", None))
    spend_target = "zero overspend: 3 servers, 64 in flight, one account"
    if overspends:
        measured = "; ".join(
            f"{o.mode}: allowed {o.allowed:,} of balance {o.balance:,}, final balance {o.final_balance} "
            f"({o.servers} servers, {o.concurrency} in flight)"
            for o in overspends
        )
        out.append(Verdict(spend_target, measured, all(o.ok for o in overspends)))
    else:
        out.append(Verdict(spend_target, "run --overspend", None))
    return out


def markdown(
    command: str,
    machine: dict[str, Any],
    settings: Settings,
    cells: Sequence[Cell],
    longs: Sequence[LongResult],
    overspends: Sequence[OverspendResult],
    counted: Sequence[InstructionCell] = (),
) -> str:
    m = machine
    lines = [
        "## Benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Linux {m['kernel']}, Python {m['python']}, "
        f"redis-server {m['redis_server']}, kong-pdk {m['kong_pdk']}, redis-py {m['redis_py']}, "
        f"hiredis {m['hiredis']}, gevent {m['gevent']}"
        + (f", node {m['node']}, kong-pdk (npm) {m['kong_js_pdk']}" if m.get("node") else "")
        + f". The load driver runs on the same CPUs ({settings.drivers} processes), so the figures "
        "compare plugins within the run, not with other machines.",
        "",
    ]
    if cells:
        lines += [
            f"Each row: the median (by server CPU) of {settings.repeat} windows of {settings.requests:,} "
            "requests, every row of a Redis transport (each runtime's paths, the gate's for each process "
            "count, the reference and the JavaScript peer) taking turns, after "
            f"{settings.warmup:,} requests of warm-up "
            "at the same concurrency (the JavaScript server: at least 3,000, as V8 compiles after a while). "
            "Server CPU is utime + stime of the plugin server process and its "
            'children (`/proc/<pid>/stat`) over the window, divided by the requests; "vs baseline" is the '
            "median, over the turns, of a window's server CPU over the same runtime's baseline window of "
            'the same turn, "vs reference" the same over the reference\'s (kong-pdk 0.36 in gevent mode '
            "running the baseline); "
            "PDK round trips are counted by "
            "the Kong side (HandleEvent included); Redis commands are Redis's own count of the commands the "
            "plugin sent (`INFO commandstats`: EVALSHA, and the set-up of new connections; pipelined "
            "commands share network writes); RSS "
            "is `VmRSS` before and after the window.",
            "",
            "| runtime | in flight | plugin | req/s | p50 ms | p99 ms | server CPU µs/req | vs baseline "
            "| vs reference | PDK RT/req | Redis cmds/req | new Redis conns | RSS MiB before → after |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for c in cells:
            if c.skipped or c.completed == 0:
                why = c.first_error or "no request completed"
                lines.append(f"| {c.mode} | {c.concurrency} | {_plugin(c)} | {why} |||||||||| ")
                continue
            note = "" if c.ok else f" ({c.errors} errors{', timed out' if c.timed_out else ''})"
            lines.append(
                f"| {c.mode} | {c.concurrency} | {_plugin(c)}{note} | {_num(c.requests_per_second)} "
                f"| {_num(c.p50_ms, 2)} | {_num(c.p99_ms, 2)} | {_num(c.server_cpu_us)} "
                f"| {_ratio(cpu_ratio(cells, c))} | {_ratio(reference_ratio(cells, c))} "
                f"| {_num(c.pdk_round_trips, 2)} "
                f"| {_num(c.redis_round_trips, 3)} | {c.redis_connections} "
                f"| {_mib(c.rss_before_kib)} → {_mib(c.rss_after_kib)} |"
            )
        lines += [
            "",
            "Where the CPU went, µs per request: the plugin server (Redis client included), the Kong side "
            "(this benchmark's driver), the redis-server process, and the time Redis itself reports for the "
            "charge script (`INFO commandstats`).",
            "",
            "| runtime | in flight | plugin | plugin server | Kong side (driver) | redis-server "
            "| charge script in Redis |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for c in cells:
            if c.skipped or c.completed == 0:
                continue
            script = sum(c.redis_usec.get(k, 0.0) for k in ("evalsha", "eval"))
            lines.append(
                f"| {c.mode} | {c.concurrency} | {_plugin(c)} | {_num(c.server_cpu_us)} "
                f"| {_num(c.driver_cpu_us)} | {_num(c.redis_cpu_us)} | {_num(script)} |"
            )
        side_by_side = runtime_lines(cells)
        if side_by_side:
            lines += ["", *side_by_side]
        rows = process_rows(cells)
        if any(r.processes > 1 for r in rows):
            lines += [
                "",
                "The gate's allowed path on 1 and on several server processes (`--processes`), side by "
                "side. Server CPU sums every process of the server (the acceptor and its server "
                'processes); "vs 1 process" divides it by the 1-process row\'s; "normalized" first '
                "divides each by the baseline windows of its own turns, which takes out the drift of a "
                "shared machine between the two sets of windows.",
                "",
                "| mode | in flight | processes | req/s | p99 ms | server CPU µs/req | vs 1 process "
                "| normalized |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for r in sorted(rows, key=lambda r: (r.family, r.concurrency, r.processes)):
                c = r.cell
                lines.append(
                    f"| {r.family} | {r.concurrency} | {r.processes} | {_num(c.requests_per_second)} "
                    f"| {_num(c.p99_ms, 2)} | {_num(c.server_cpu_us)} | {_ratio(r.cpu_vs_one)} "
                    f"| {_ratio(r.normalized_vs_one)} |"
                )
        mode, means = best_mode(cells)
        if mode and len(means) > 1:
            others = ", ".join(
                f"{other} {means[other]:,.0f} µs ({means[other] / means[mode]:.2f}x)"
                for other in means
                if other != mode
            )
            lines += [
                "",
                f"Least plugin-server CPU per allowed request (mean over the concurrencies): **{mode}**, "
                f"{means[mode]:,.0f} µs; {others}.",
            ]
    if longs:
        lines += [
            "",
            f"RSS over a long run ({longs[0].requests:,} requests at {longs[0].cell.concurrency} "
            "in flight, after a warm-up; per mode a fresh baseline server, and one fresh credit-gate server "
            "that runs the allowed path, then the refused one). The second half tells a climb to a plateau "
            "from a leak:",
            "",
            "| mode | plugin | requests | req/s | RSS MiB before | at half | after | growth MB "
            "| second half MB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for lr in longs:
            c, d = lr.cell, lr.second
            errors = c.errors + d.errors
            note = "" if lr.ok else f" ({errors} errors{', timed out' if c.timed_out or d.timed_out else ''})"
            lines.append(
                f"| {c.mode} | {LABELS[c.path]}{note} | {lr.requests:,} | {_num(d.requests_per_second)} "
                f"| {_mib(c.rss_before_kib)} | {_mib(d.rss_before_kib)} | {_mib(d.rss_after_kib)} "
                f"| {lr.growth_mb:+.1f} | {lr.second_half_growth_mb:+.1f} |"
            )
    if overspends:
        lines += [
            "",
            "Overspend: one account, many more requests than its balance pays, several plugin servers:",
            "",
            "| mode | servers | in flight | balance | requests | allowed | refused (402) | other "
            "| final balance | ledger |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for o in overspends:
            refused = o.statuses.get(402, 0)
            ledger = "replays" if o.ledger_ok else "MISMATCH"
            lines.append(
                f"| {o.mode} | {o.servers} | {o.concurrency} | {o.balance:,} | {o.completed:,} "
                f"| {o.allowed:,} | {refused:,} | {o.completed - o.allowed - refused} "
                f"| {o.final_balance} | {ledger} |"
            )
    if counted:
        lines += ["", *instruction_lines(settings, counted)]
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    for v in verdicts(cells, longs, overspends, counted):
        lines.append(f"| {v.target} | {v.measured} | {v.word} |")
    return "\n".join(lines) + "\n"


def instruction_lines(settings: Settings, counted: Sequence[InstructionCell]) -> list[str]:
    """The ``--instructions`` table and what the gate adds over the round-trip floor."""
    many = any(c.processes > 1 for c in counted)
    lines = [
        "Instructions per request, counted by valgrind's callgrind: the user-space instructions of the "
        "plugin server (every process of it), not the kernel's. Each row: the median of "
        f"{settings.repeat} windows of {settings.instruction_requests:,} requests, the paths taking turns, "
        '"spread" the largest window less the smallest over the median. At 1 in flight the driver sends a '
        "message only once every thread of the server sleeps, so that every message finds it waiting; "
        "at more in flight the server under valgrind is the bottleneck and messages queue for it. "
        '"over the floor" is the row less the baseline + the round trip\'s on the same runtime: the '
        "gate's own logic; \"vs reference\" divides by kong-pdk 0.36 gevent's baseline.",
        "",
        "| runtime | in flight | plugin | instructions/req | spread | vs baseline | vs reference "
        "| over the floor " + ("| vs 1 process |" if many else "|"),
        "|---|---:|---|---:|---:|---:|---:|---:|" + ("---:|" if many else ""),
    ]
    for c in counted:
        if not c.ok:
            why = c.first_error or f"{c.errors} errors"
            lines.append(f"| {c.mode} | {c.concurrency} | {_plugin(c)} | {why} |||||" + ("|" if many else ""))
            continue
        floor = over_floor(counted, c) if c.path in GATE_PATHS else float("nan")
        gate_only = "-" if math.isnan(floor) else f"{floor:+,.0f}"
        line = (
            f"| {c.mode} | {c.concurrency} | {_plugin(c)} | {_num(c.median)} | {c.spread * 100:.2f}% "
            f"| {_ratio(counted_ratio(counted, c, 'baseline'))} "
            f"| {_precise(counted_reference_ratio(counted, c))} | {gate_only} |"
        )
        if many:
            one = counted_ratio(counted, c, c.path, 1) if c.path in GATE_PATHS else float("nan")
            line += f" {_precise(one)} |"
        lines.append(line)
    return lines


def _clean(value: Any) -> Any:
    """JSON without NaN (not valid JSON): NaN becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def as_json(
    command: str,
    machine: dict[str, Any],
    settings: Settings,
    cells: Sequence[Cell],
    longs: Sequence[LongResult],
    overspends: Sequence[OverspendResult],
    counted: Sequence[InstructionCell] = (),
) -> dict[str, Any]:
    mode, means = best_mode(cells)
    payload: dict[str, Any] = _clean(
        {
            "command": command,
            "machine": machine,
            "settings": asdict(settings),
            "cells": [
                {
                    **asdict(c),
                    "ok": c.ok,
                    "reference": is_reference(c),
                    "cpu_ratio_to_baseline": cpu_ratio(cells, c),
                    "cpu_ratio_to_reference": reference_ratio(cells, c),
                }
                for c in cells
            ],
            "best_mode": mode,
            "allowed_server_cpu_us_by_mode": means,
            "runtimes": [r.to_json() for r in runtime_rows(cells)],
            "long": [r.to_json() for r in longs],
            "overspend": [{**asdict(o), "ok": o.ok} for o in overspends],
            "instructions": [
                {
                    **c.to_json(),
                    "reference": is_reference(c),
                    "ratio_to_baseline": counted_ratio(counted, c, "baseline"),
                    "ratio_to_reference": counted_reference_ratio(counted, c),
                    "over_the_floor": over_floor(counted, c),
                }
                for c in counted
            ],
            "targets": [
                {**asdict(v), "verdict": v.word} for v in verdicts(cells, longs, overspends, counted)
            ],
        }
    )
    return payload
