"""How the benchmark compares runtimes, on made-up windows: the row set it starts, which rows it
pairs, and the targets it judges. No server runs: the measuring itself is tests/deploy/test_bench.py's."""

from __future__ import annotations

import math

from bench.compare import (
    kong_pdk_ratio,
    paired_ratio,
    per_core,
    reference_ratio,
    runtime_lines,
    runtime_rows,
    runtime_verdicts,
)
from bench.lineup import ServerSpec, Settings, lineup, mode_label
from bench.procs import CREDIT_GATE, KONG_JS, KONG_PDK, PEER, REFERENCE, Runtime
from bench.runner import Cell, failed_cell

NAN = math.nan


def window(
    runtime: Runtime, path: str, turns: list[float], concurrency: int = 64, processes: int = 1
) -> Cell:
    """A row whose turns' windows cost ``turns`` µs of server CPU per request."""
    cell = failed_cell(mode_label(runtime, "tcp", processes), concurrency, path, "")
    cell.place(runtime, "tcp", processes)
    cell.skipped, cell.first_error, cell.requests, cell.completed = False, None, 100, 100
    cell.turn_cpu_us = turns
    cell.server_cpu_us = sorted(turns)[len(turns) // 2]
    return cell


def test_credit_gate_s_runtime_runs_once_and_kong_pdk_s_in_each_mode() -> None:
    settings = Settings(runtimes=(CREDIT_GATE, KONG_PDK), modes=("threads", "gevent"), processes=(1, 2))
    specs = lineup(settings)
    assert [s.runtime.label for s in specs if s.kind == "gate"] == [
        "credit-gate",
        "credit-gate",
        "kong-pdk threads",
        "kong-pdk threads",
        "kong-pdk gevent",
        "kong-pdk gevent",
    ]
    # The reference is kong-pdk gevent's own baseline, not a second server; the peer comes last.
    assert [s for s in specs if s.kind == "baseline"].count(ServerSpec("baseline", REFERENCE)) == 1
    assert specs[-1] == ServerSpec("baseline", PEER)
    assert len({s.name for s in specs}) == len(specs)  # each its own socket


def test_the_reference_runs_even_when_kong_pdk_gevent_is_not_among_the_runtimes() -> None:
    specs = lineup(Settings(runtimes=(CREDIT_GATE,), processes=(1,), js=False))
    assert specs[0] == ServerSpec("baseline", REFERENCE)
    assert {s.runtime for s in specs[1:]} == {Runtime(CREDIT_GATE)}


def test_each_runtime_gets_its_own_flags() -> None:
    assert Runtime(CREDIT_GATE).flags() == ["--runtime", "credit-gate"]
    assert Runtime(KONG_PDK, "gevent").flags() == ["--runtime", "kong-pdk", "-g"]
    assert Runtime(KONG_PDK, "threads").flags() == ["--runtime", "kong-pdk"]
    assert (PEER.flags(), PEER.socket_flag) == ([], "--sock-name")  # Kong's JS server's cli.js
    assert REFERENCE.socket_flag == "--socket-name"
    assert Runtime(KONG_JS).label == "kong-js-pdk" and REFERENCE.label == "kong-pdk gevent"


def test_a_ratio_pairs_the_windows_of_each_turn_and_skips_a_missing_one() -> None:
    # The machine's load moves both rows of a turn alike: two turns of three say 0.5x, the ratio of
    # the medians would say 0.67x.
    gate = window(Runtime(CREDIT_GATE), "allowed", [50.0, 100.0, 300.0])
    kong_pdk = window(Runtime(KONG_PDK, "gevent"), "allowed", [100.0, 200.0, 150.0])
    assert math.isclose(gate.server_cpu_us / kong_pdk.server_cpu_us, 2 / 3)
    assert math.isclose(paired_ratio(gate, kong_pdk), 0.5)
    gate.turn_cpu_us = [50.0, NAN, 100.0]
    kong_pdk.turn_cpu_us = [100.0, 200.0, 200.0]
    assert math.isclose(paired_ratio(gate, kong_pdk), 0.5)


def test_every_row_is_divided_by_the_reference_of_its_row_set_and_concurrency() -> None:
    cells = [
        window(REFERENCE, "baseline", [300.0, 300.0, 300.0]),
        window(REFERENCE, "baseline", [900.0, 900.0, 900.0], concurrency=1),
        window(Runtime(CREDIT_GATE), "allowed", [120.0, 120.0, 120.0]),
        window(REFERENCE, "allowed", [360.0, 360.0, 360.0]),
        window(PEER, "baseline", [150.0, 150.0, 150.0]),
    ]
    assert [reference_ratio(cells, c) for c in cells] == [1.0, 1.0, 0.4, 1.2, 0.5]
    assert math.isclose(kong_pdk_ratio(cells, cells[2]), 1 / 3)
    assert math.isnan(kong_pdk_ratio(cells, cells[3]))  # kong-pdk is not compared with itself


def test_the_side_by_side_table_gives_requests_a_second_per_core() -> None:
    cells = [
        window(REFERENCE, "baseline", [250.0]),
        window(REFERENCE, "allowed", [400.0]),
        window(Runtime(CREDIT_GATE), "baseline", [80.0]),
        window(Runtime(CREDIT_GATE), "allowed", [125.0]),
        window(PEER, "baseline", [100.0]),
    ]
    rows = {r.runtime: r for r in runtime_rows(cells)}
    assert rows[CREDIT_GATE].allowed_per_core == per_core(125.0) == 8_000
    assert rows[KONG_PDK].reference and not rows[CREDIT_GATE].reference
    assert math.isnan(rows[KONG_JS].allowed_per_core) and rows[KONG_JS].baseline_per_core == 10_000
    text = "\n".join(runtime_lines(cells))
    assert "| 64 | credit-gate, 1 process | 80 | - | 125 | - | 12,500 | 8,000 | 0.31x | 0.50x |" in text
    assert "| 64 | kong-pdk gevent, 1 process | 250 * |" in text


def test_the_cpu_target_judges_credit_gate_s_runtime_against_kong_pdk_s_at_64_in_flight() -> None:
    cells = [
        window(Runtime(CREDIT_GATE), "allowed", [100.0, 100.0, 100.0]),
        window(Runtime(KONG_PDK, "threads"), "allowed", [600.0, 600.0, 600.0]),
        window(REFERENCE, "allowed", [200.0, 300.0, 250.0]),
        window(Runtime(CREDIT_GATE), "allowed", [900.0], concurrency=1),  # not judged: 1 in flight
    ]
    (cpu,) = [v for v in runtime_verdicts(cells, []) if v.target.startswith("server CPU")]
    assert "against kong-pdk gevent, 1 process's 250 µs, 0.40x" in cpu.measured  # gevent, not threads
    assert cpu.word == "pass"
    cells[0].turn_cpu_us = [101.0, 121.0, 101.0]
    (cpu,) = [v for v in runtime_verdicts(cells, []) if v.target.startswith("server CPU")]
    assert cpu.word == "FAIL"
    assert [v.word for v in runtime_verdicts([], [])] == ["not run", "not run", "not run"]
