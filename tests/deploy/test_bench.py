"""The benchmark's measuring code, run on a few hundred requests: what it counts, not how fast it is."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Iterator

import pytest

from bench.cli import command_line
from bench.compare import is_reference, reference_ratio
from bench.instructions import InstructionCell, instructions
from bench.lineup import Settings
from bench.procs import CREDIT_GATE, KONG_JS, KONG_PDK
from bench.report import as_json, markdown, over_floor, process_rows
from bench.runner import Bench, Cell, OverspendResult

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

SETTINGS = Settings(
    runtimes=(CREDIT_GATE, KONG_PDK),
    modes=("threads",),  # not gevent: the reference (kong-pdk gevent's baseline) then runs on its own
    processes=(2,),  # the gate on the multi-process server: each driver process starts its instance
    transports=("tcp",),
    concurrencies=(4,),
    requests=200,
    warmup=100,
    drivers=2,
    timeout=30,
    js=False,
    overspend_balance=25,
    overspend_requests=120,
    overspend_concurrency=16,
)

LABELS = {CREDIT_GATE: "credit-gate", KONG_PDK: "kong-pdk threads"}
MACHINE = {"nproc": 2, "cpu_model": "x", "kernel": "k", "python": "3", "redis_server": "7"}
MACHINE |= {"kong_pdk": "0.36", "redis_py": "8", "hiredis": "3", "gevent": "26"}
GATE_ALLOWED = ["kong.client.get_consumer", "kong.service.request.set_headers", "kong.response.set_headers"]


def rows_of(cells: list[Cell], runtime: str) -> dict[str, Cell]:
    """A runtime's rows by path, the reference apart."""
    return {c.path: c for c in cells if c.runtime == runtime and not is_reference(c)}


@pytest.fixture(scope="module")
def bench() -> Iterator[Bench]:
    with Bench(SETTINGS, progress=lambda _line: None) as bench:
        yield bench


@pytest.fixture(scope="module")
def table(bench: Bench) -> list[Cell]:
    return bench.table()


def test_every_window_completes_with_the_statuses_of_its_path(table: list[Cell]) -> None:
    for runtime, label in LABELS.items():
        cells = rows_of(table, runtime)
        assert set(cells) == {"baseline", "round_trip", "allowed", "refused"}
        for cell in cells.values():
            assert cell.ok, cell.first_error
            processes = "2 processes" if cell.path in ("allowed", "refused") else "1 process"
            assert (cell.mode, cell.concurrency, cell.completed) == (f"{label}, {processes}", 4, 200)
            assert (cell.runtime, cell.transport) == (runtime, "tcp")
            assert cell.requests_per_second > 0 and 0 < cell.p50_ms <= cell.p99_ms
            assert cell.server_cpu_us > 0 and cell.rss_before_kib > 0 and cell.rss_after_kib > 0
        assert cells["baseline"].statuses == {200: 200}
        assert cells["round_trip"].statuses == {200: 200}
        assert cells["allowed"].statuses == {200: 200}
        assert cells["refused"].statuses == {402: 200}
        assert cells["refused"].refusal_reason == "insufficient_credit"
    (reference,) = [c for c in table if is_reference(c)]
    assert (reference.mode, reference.kong_pdk_mode, reference.statuses) == (
        "kong-pdk gevent, 1 process",
        "gevent",
        {200: 200},
    )


def test_the_unix_socket_rows_charge_through_redis_s_socket(bench: Bench) -> None:
    bench.settings = dataclasses.replace(
        SETTINGS, transports=("unix",), runtimes=(KONG_PDK,), modes=("gevent",)
    )
    try:
        cells = rows_of(bench.table(), KONG_PDK)
    finally:
        bench.settings = SETTINGS
    assert {cells[p].mode for p in ("allowed", "refused")} == {"kong-pdk gevent, 2 processes (unix socket)"}
    assert cells["allowed"].statuses == {200: 200} and cells["refused"].statuses == {402: 200}
    assert math.isclose(cells["allowed"].redis_round_trips - cells["allowed"].redis_setup_round_trips, 1.0)


def test_the_reference_is_kong_pdk_gevent_s_baseline_when_its_runtime_runs(bench: Bench) -> None:
    bench.settings = dataclasses.replace(SETTINGS, runtimes=(KONG_PDK,), modes=("gevent",), repeat=3)
    try:
        cells = bench.table()
    finally:
        bench.settings = SETTINGS
    (reference,) = [c for c in cells if is_reference(c)]
    assert reference.mode == "kong-pdk gevent, 1 process"
    assert len([c for c in cells if c.path == "baseline"]) == 1  # the same server, not a second one
    assert reference_ratio(cells, reference) == 1.0


def test_pdk_round_trips_are_counted_per_request_handle_event_included(table: list[Cell]) -> None:
    for runtime in LABELS:
        cells = rows_of(table, runtime)
        assert cells["allowed"].pdk_methods == GATE_ALLOWED
        assert cells["baseline"].pdk_methods == GATE_ALLOWED  # the baseline makes the same calls
        assert cells["round_trip"].pdk_methods == GATE_ALLOWED
        assert cells["refused"].pdk_methods == ["kong.client.get_consumer", "kong.response.exit"]
        assert cells["allowed"].pdk_round_trips == 4
        assert cells["baseline"].pdk_round_trips == 4
        assert cells["refused"].pdk_round_trips == 2


def test_redis_round_trips_come_from_redis_own_counters(table: list[Cell]) -> None:
    for runtime in LABELS:
        cells = rows_of(table, runtime)
        for path in ("allowed", "refused"):
            cell = cells[path]
            # A connection redis-py opens during the window costs one set-up round trip (HELLO) more.
            setup = cell.redis_setup_round_trips
            assert math.isclose(cell.redis_round_trips - setup, 1)
            assert 0 < cell.redis_writes <= cell.redis_round_trips  # pipelined replies may share a write
            assert cell.redis_script_calls == 1
            assert cell.redis_commands["evalsha"] == 1  # the commands inside the script are listed apart
        baseline = cells["baseline"]
        assert (baseline.redis_round_trips, baseline.redis_reads, baseline.redis_commands) == (0, 0, {})


def test_the_round_trip_path_sends_the_gate_s_charge_and_nothing_else(table: list[Cell]) -> None:
    for runtime in LABELS:
        cells = rows_of(table, runtime)
        round_trip = cells["round_trip"]
        assert math.isclose(round_trip.redis_round_trips - round_trip.redis_setup_round_trips, 1)
        assert round_trip.redis_commands["evalsha"] == 1
        # The same script as the gate's, doing the same work in Redis: the same commands inside it.
        assert set(round_trip.redis_commands) == set(cells["allowed"].redis_commands)


def test_overspend_counts_what_was_allowed_and_what_is_left(bench: Bench) -> None:
    results = bench.overspend()
    assert [r.mode for r in results] == ["credit-gate, 2 processes", "kong-pdk threads, 2 processes"]
    for result in results:
        assert isinstance(result, OverspendResult)
        assert result.completed == 120 and result.errors == 0
        assert (result.allowed, result.statuses.get(402), result.final_balance) == (25, 95, 0)
        assert result.ok and result.ledger_ok


def test_the_report_is_a_markdown_table_and_valid_json(table: list[Cell]) -> None:
    command = command_line(["--requests", "200"])
    text = markdown(command, MACHINE, SETTINGS, table, [], [])
    assert f"`{command}`" in text and command.endswith("-m bench --requests 200")
    assert "| credit-gate, 2 processes | 4 | credit-gate allowed | " in text
    assert "| kong-pdk gevent, 1 process | 4 | baseline (reference) | " in text
    verdict = next(line for line in text.splitlines() if "exactly 1 Redis command" in line)
    assert verdict.startswith("| exactly 1 Redis command (round trip) per allowed or refused request | 1.000")
    assert verdict.endswith("| pass |")
    cpu = next(line for line in text.splitlines() if line.startswith("| server CPU per allowed request <="))
    assert "the round trip alone: " in cpu
    # The runtimes side by side: the gate on credit-gate's runtime against the gate on kong-pdk's.
    side = next(line for line in text.splitlines() if line.startswith("| 4 | credit-gate, 2 processes |"))
    assert side.count("x |") == 2
    payload = json.loads(json.dumps(as_json(command, MACHINE, SETTINGS, table, [], []), allow_nan=False))
    assert {(c["runtime"], c["path"]) for c in payload["cells"]} == {
        (runtime, path)
        for runtime in (CREDIT_GATE, KONG_PDK)
        for path in ("baseline", "round_trip", "allowed", "refused")
    }
    allowed = next(c for c in payload["cells"] if c["path"] == "allowed" and c["runtime"] == CREDIT_GATE)
    assert math.isclose(allowed["cpu_ratio_to_baseline"], statistics.median(allowed["turn_ratios"]))
    assert allowed["cpu_ratio_to_reference"] > 0
    (reference,) = [c for c in payload["cells"] if c["reference"]]
    assert reference["cpu_ratio_to_reference"] == 1.0
    assert {r["runtime"] for r in payload["runtimes"]} == {CREDIT_GATE, KONG_PDK}


def test_the_ratios_pair_the_windows_of_each_turn(table: list[Cell]) -> None:
    for runtime in LABELS:
        cells = rows_of(table, runtime)
        assert len(cells["allowed"].turn_ratios) == SETTINGS.repeat
        assert len(cells["refused"].turn_ratios) == SETTINGS.repeat
        assert len(cells["round_trip"].turn_ratios) == SETTINGS.repeat
        assert all(r > 0 for r in cells["allowed"].turn_ratios)
        assert len(cells["allowed"].turn_cpu_us) == SETTINGS.repeat
        assert cells["allowed"].server_cpu_us == statistics.median(cells["allowed"].turn_cpu_us)


def test_one_and_two_processes_run_side_by_side_and_are_compared(bench: Bench) -> None:
    bench.settings = dataclasses.replace(SETTINGS, runtimes=(KONG_PDK,), modes=("gevent",), processes=(1, 2))
    try:
        cells = bench.table()
    finally:
        bench.settings = SETTINGS
    assert {(c.mode, c.path, c.processes) for c in cells if c.path in ("allowed", "refused")} == {
        (f"kong-pdk gevent, {n} process{'es' if n > 1 else ''}", path, n)
        for n in (1, 2)
        for path in ("allowed", "refused")
    }
    assert all(c.ok for c in cells), [c.first_error for c in cells if not c.ok]
    (row,) = [r for r in process_rows(cells) if r.processes == 2]
    assert (row.family, row.concurrency) == ("kong-pdk gevent", 4)
    assert row.cpu_vs_one > 0 and row.normalized_vs_one > 0
    text = markdown("python -m bench", MACHINE, bench.settings, cells, [], [])
    assert "| kong-pdk gevent | 4 | 2 | " in text and "| kong-pdk gevent | 4 | 1 | " in text
    assert "with several processes <= 1 process's" in text


def test_the_javascript_peer_makes_the_baseline_s_calls_on_kong_s_js_server(bench: Bench) -> None:
    bench.settings = dataclasses.replace(SETTINGS, runtimes=(CREDIT_GATE,), processes=(1,), js=True)
    try:
        cells = bench.table()
    finally:
        bench.settings = SETTINGS
    (peer,) = [c for c in cells if c.runtime == KONG_JS]
    assert peer.ok, peer.first_error
    assert (peer.mode, peer.path, peer.statuses) == ("kong-js-pdk, 1 process", "baseline", {200: 200})
    assert peer.pdk_methods == GATE_ALLOWED and peer.pdk_round_trips == 4
    assert reference_ratio(cells, peer) > 0


def test_instructions_are_counted_per_request_for_every_path_under_callgrind(bench: Bench) -> None:
    bench.settings = settings = dataclasses.replace(
        SETTINGS,
        runtimes=(CREDIT_GATE,),
        processes=(1,),
        concurrencies=(1,),
        warmup=10,
        repeat=1,
        instructions=True,
        instruction_requests=10,
    )
    try:
        counted = instructions(bench)
    finally:
        bench.settings = SETTINGS
    by_path: dict[str, InstructionCell] = {c.path: c for c in counted if not is_reference(c)}
    assert set(by_path) == {"baseline", "round_trip", "allowed", "refused"}
    assert all(c.ok and c.paced and len(c.per_request) == 1 for c in counted), counted
    assert by_path["allowed"].statuses == {200: 10} and by_path["refused"].statuses == {402: 10}
    # A Python plugin server runs hundreds of thousands of instructions a request; the round trip adds
    # to the baseline's, and the gate's allowed path to the round trip's.
    baseline, floor, allowed = (by_path[p].median for p in ("baseline", "round_trip", "allowed"))
    assert 100_000 < baseline < floor < allowed < 10_000_000
    assert over_floor(counted, by_path["allowed"]) == allowed - floor
    text = markdown("python -m bench --instructions", MACHINE, settings, [], [], [], counted)
    assert "the median of 1 windows of 10 requests" in text
    assert "| credit-gate, 1 process | 1 | credit-gate allowed | " in text
    assert "| kong-pdk gevent, 1 process | 1 | baseline (reference) | " in text
    assert f"| {allowed - floor:+,.0f} |" in text
    verdict = next(line for line in text.splitlines() if "per allowed request on credit-gate's" in line)
    assert "credit-gate, 1 process, 1 in flight: " in verdict
