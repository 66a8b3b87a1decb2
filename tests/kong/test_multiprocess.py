"""Several server processes behind one socket: each nginx worker's connections and instances in one of them.

The nginx workers here are separate OS processes (spawned), so each has its own peer pid, its own
instance table and its own pool, as in a Kong node; within a worker, requests run on several threads,
so that the messages of one event travel on different pooled connections.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import pytest

from creditgate.core.config import RedisSettings
from creditgate.kong import processes as multiprocess
from creditgate.ops.admin import Admin
from tests.gate_fixtures import MODES, PLUGIN_SERVER, gate_config, start_plugin_server
from tests.harness import (
    KongRequest,
    KongSide,
    KongWouldBypass,
    PluginConfig,
    PluginInfo,
    PluginServerProcess,
)

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

CONSUMER = {"id": "acme", "username": "acme", "custom_id": None}
COSTS = {"route-a": 5, "route-b": 0}  # A: premium, plans [pro]; B: free, any plan


def routes(settings: RedisSettings) -> list[PluginConfig]:
    return [
        gate_config(settings, cost=5, plans=["pro"], route_id="route-a"),
        gate_config(settings, cost=0, route_id="route-b"),
    ]


def server_pid_of_connection(path: str) -> int:
    """The pid of the server process that serves a fresh connection (kong-pdk's GetStatus answers it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(msgpack.packb([0, 1, "plugin.GetStatus", [None]]))
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        while True:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            unpacker.feed(chunk)
            for message in unpacker:
                return int(message[3]["Pid"])


def nginx_worker(
    path: str, info: PluginInfo, plugins: list[PluginConfig], requests: int, threads: int, probe: bool = True
) -> dict[str, Any]:
    """One nginx worker: its own KongSide (instance table, pool), ``threads`` requests at a time.

    A request Kong would proxy without the plugin is recorded as status -1 (it never is, unless it was
    in flight in a server process that was killed). ``probe`` then asks which server processes serve
    the worker's new connections: not while a test may kill one of them (a worker that finished its
    requests early on a loaded machine would have its probe reset by the kill)."""
    results: list[tuple[str, int | None, str | None, bool]] = []
    with KongSide(path, info, timeout=20) as kong:

        def one(i: int) -> tuple[str, int | None, str | None, bool]:
            plugin = plugins[i % len(plugins)]
            try:
                out = kong.request(plugin, KongRequest(path="/v1/x", consumer=CONSUMER))
            except KongWouldBypass:
                return plugin.route_id or "", -1, None, True
            return plugin.route_id or "", out.status, out.response_headers.get("X-Credit-Cost"), out.proxied

        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(one, range(requests)))
        started = [s.instance_id for s in kong.started_instances]
        opened = kong.connections_opened
    # Every connection this worker opens is served by the same process.
    pids: set[int] = set()
    if probe:
        with ThreadPoolExecutor(8) as pool:
            pids = set(pool.map(lambda _: server_pid_of_connection(path), range(8)))
    return {"pid": os.getpid(), "results": results, "server_pids": pids, "started": started, "opened": opened}


def run_workers(
    path: str,
    info: PluginInfo,
    plugins: list[PluginConfig],
    workers: int,
    requests: int,
    meanwhile: Any = None,
) -> Any:
    context = multiprocessing.get_context("spawn")
    probe = meanwhile is None
    with context.Pool(workers) as pool:
        jobs = [
            pool.apply_async(nginx_worker, (path, info, plugins, requests, 4, probe)) for _ in range(workers)
        ]
        if meanwhile is not None:
            meanwhile()
        return [job.get(180) for job in jobs]


def server_processes(server: PluginServerProcess) -> list[int]:
    assert server.pid is not None
    return [int(p) for p in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]


def wait_until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:  # a guard against hanging, not a speed bound
            pytest.fail("timed out waiting")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def redis_timeout_ms() -> int:
    return 2000  # a loaded machine must not turn a slow charge into a 503


@pytest.fixture(params=sorted(MODES))
def two_processes(request: pytest.FixtureRequest) -> Iterator[PluginServerProcess]:
    flags = ("--processes", "2", *MODES[request.param])
    server = start_plugin_server(*flags)
    wait_until(lambda: len(server_processes(server)) == 2)
    yield server
    server.stop()
    shutil.rmtree(Path(server.socket_path).parent, ignore_errors=True)


# -- the command line ------------------------------------------------------------------------------------


def test_processes_default_to_one_per_core_and_take_a_flag() -> None:
    flags = multiprocess.split_flags(["-g", "--processes", "3", "--kong-prefix", "/k"])
    assert (flags.processes, flags.channel_fd, flags.rest) == (3, None, ["-g", "--kong-prefix", "/k"])
    assert multiprocess.split_flags(["--processes=1"]).processes == 1
    assert multiprocess.split_flags(["-g"], default=lambda: 7).processes == 7
    assert multiprocess.default_processes() == min(
        len(os.sched_getaffinity(0)), multiprocess.cgroup_cpu_limit() or 10**6
    )
    for bad in (["--processes", "0"], ["--processes", "two"], ["--processes"], ["--processes", "999"]):
        with pytest.raises(ValueError, match="--processes"):
            multiprocess.split_flags(bad)


def test_a_cgroup_cpu_quota_caps_the_default(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert multiprocess.cgroup_cpu_limit(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert multiprocess.cgroup_cpu_limit(cpu_max) is None
    assert multiprocess.cgroup_cpu_limit(tmp_path / "absent") is None


def test_a_bad_processes_value_is_refused_with_a_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*PLUGIN_SERVER, "--processes", "0", "--kong-prefix", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--processes must be between 1 and 256" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_command_line_the_server_processes_would_refuse_stops_before_the_acceptor(tmp_path: Path) -> None:
    """An unknown flag is named at once (exit 2), never a server process refused and restarted every
    second for ever; the acceptor's own check stays behind it (processes.py, ``_lost``)."""
    proc = subprocess.run(
        [*PLUGIN_SERVER, "--processes", "2", "--no-such-flag", "--kong-prefix", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown argument(s): --no-such-flag" in proc.stderr
    assert not list(tmp_path.iterdir())  # no socket: nothing started


def test_the_query_command_prints_the_same_dump_whatever_the_processes() -> None:
    plain = subprocess.run([*PLUGIN_SERVER, "--dump"], capture_output=True, timeout=30, check=True)
    many = subprocess.run(
        [*PLUGIN_SERVER, "--processes", "2", "--dump"], capture_output=True, timeout=30, check=True
    )
    assert plain.stdout == many.stdout and plain.stdout.startswith(b'[{"Name": "credit-gate"')


def test_one_process_is_today_s_single_server_without_an_acceptor() -> None:
    server = start_plugin_server("-g", "--processes", "1")
    try:
        assert server_processes(server) == []
        assert server_pid_of_connection(server.socket_path) == server.pid
    finally:
        server.stop()


# -- many nginx workers ----------------------------------------------------------------------------------


def test_the_events_of_many_nginx_workers_are_answered_and_each_worker_stays_in_one_process(
    two_processes: PluginServerProcess, plugin_info: PluginInfo, own_settings: RedisSettings, funded: Admin
) -> None:
    before = funded.account("acme").balance
    reports = run_workers(
        two_processes.socket_path, plugin_info, routes(own_settings), workers=4, requests=40
    )
    charged = 0
    for report in reports:
        assert len(report["server_pids"]) == 1, report  # every connection of a worker: one process
        assert report["opened"] > 1  # its events did travel on several pooled connections
        assert len(report["results"]) == 40
        for route, status, cost, proxied in report["results"]:
            assert status is None and proxied, (route, status)
            assert cost == str(COSTS[route])  # charged under its own route's configuration
            charged += COSTS[route]
    used = set().union(*(r["server_pids"] for r in reports))
    assert used == set(server_processes(two_processes))  # 4 workers spread over both processes
    assert funded.account("acme").balance == before - charged
    assert funded.verify_ledger("acme").ok


def test_a_worker_that_closes_all_its_connections_comes_back_to_the_same_process(
    two_processes: PluginServerProcess,
) -> None:
    first = server_pid_of_connection(two_processes.socket_path)  # no connection stays open in between
    assert all(server_pid_of_connection(two_processes.socket_path) == first for _ in range(10))


# -- a server process dies -------------------------------------------------------------------------------


def test_a_killed_server_process_is_replaced_and_kong_re_creates_its_instances_under_their_own_config(
    two_processes: PluginServerProcess, plugin_info: PluginInfo, own_settings: RedisSettings, funded: Admin
) -> None:
    path = two_processes.socket_path
    plugin_a, plugin_b = routes(own_settings)
    with KongSide(path, plugin_info, timeout=20) as kong:
        assert (
            kong.request(plugin_a, KongRequest(consumer=CONSUMER)).response_headers.get("X-Credit-Cost")
            == "5"
        )
        assert (
            kong.request(plugin_b, KongRequest(consumer=CONSUMER)).response_headers.get("X-Credit-Cost")
            == "0"
        )
        victim = server_pid_of_connection(path)
        other = next(p for p in server_processes(two_processes) if p != victim)
        before = funded.account("acme").balance
        os.kill(victim, signal.SIGKILL)
        # Until the acceptor has seen it go, a thread of it may still hold its sockets open, and a
        # request sent then is one in flight at the kill (the test under load covers those).
        wait_until(lambda: f"exited (pid {victim}," in two_processes.log_text())
        # The pool's connections to the dead process are closed by it; the next event reaches the
        # replacement (once it is up), which knows no instance: Kong re-creates and retries.
        outcomes = [kong.request(p, KongRequest(consumer=CONSUMER)) for p in (plugin_b, plugin_a, plugin_a)]
        replacement = server_pid_of_connection(path)
    assert replacement not in (victim, other)
    assert sorted(server_processes(two_processes)) == sorted([replacement, other])
    assert [o.response_headers.get("X-Credit-Cost") for o in outcomes] == ["0", "5", "5"]
    assert all(o.proxied for o in outcomes)
    assert funded.account("acme").balance == before - 10
    assert "server process" in two_processes.log_text() and "exited" in two_processes.log_text()


def test_under_load_a_killed_server_process_costs_only_the_requests_in_flight_in_it(
    two_processes: PluginServerProcess, plugin_info: PluginInfo, own_settings: RedisSettings, funded: Admin
) -> None:
    funded.grant("acme", 100_000)
    before = funded.account("acme").balance
    victims: list[int] = []

    def kill_one_when_busy() -> None:
        wait_until(lambda: "instance #" in two_processes.log_text(), timeout=60)
        time.sleep(0.5)  # requests are flowing on both processes
        victims.append(server_processes(two_processes)[0])
        os.kill(victims[0], signal.SIGKILL)

    reports = run_workers(
        two_processes.socket_path, plugin_info, routes(own_settings), 4, 150, meanwhile=kill_one_when_busy
    )
    results = [r for report in reports for r in report["results"]]
    lost = [r for r in results if r[1] == -1]
    answered = [r for r in results if r[1] != -1]
    assert len(lost) <= 2 * 4  # at most the requests in flight in the killed process (2 workers x 4)
    for route, status, cost, proxied in answered:
        assert status is None and proxied and cost == str(COSTS[route]), (route, status, cost)
    charged = sum(COSTS[route] for route, *_ in answered)
    # A lost request may have been charged before its answer was lost; never more than its own cost.
    extra = before - funded.account("acme").balance - charged
    assert 0 <= extra <= 5 * len(lost) and extra % 5 == 0
    assert funded.verify_ledger("acme").ok
    assert len(victims) == 1 and not alive(victims[0])
    assert len(server_processes(two_processes)) == 2  # replaced


def test_a_crashing_server_process_is_restarted_at_most_once_a_second(
    two_processes: PluginServerProcess,
) -> None:
    path = two_processes.socket_path
    pids = [server_pid_of_connection(path)]
    starts = []
    for _ in range(2):
        os.kill(pids[-1], signal.SIGKILL)
        wait_until(lambda: server_pid_of_connection(path) != pids[-1])
        pids.append(server_pid_of_connection(path))
        starts.append(start_time(pids[-1]))
    assert starts[1] - starts[0] >= 1.0 - 0.02  # clock ticks: /proc's start time is in 1/100 s


def start_time(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


# -- stopping --------------------------------------------------------------------------------------------


def test_sigterm_stops_every_process(two_processes: PluginServerProcess) -> None:
    children = server_processes(two_processes)
    two_processes.stop()  # SIGTERM, and SIGKILL after 5 s: the acceptor must be gone before
    wait_until(lambda: not any(alive(p) for p in children), timeout=10)


def test_a_killed_acceptor_takes_its_server_processes_with_it(two_processes: PluginServerProcess) -> None:
    children = server_processes(two_processes)
    two_processes.kill()
    wait_until(lambda: not any(alive(p) for p in children), timeout=10)


def test_the_acceptor_keeps_no_descriptor_of_a_connection_or_a_finished_peer(
    two_processes: PluginServerProcess,
) -> None:
    acceptor = two_processes.pid
    server_pid_of_connection(two_processes.socket_path)  # this test's own pin
    baseline = len(os.listdir(f"/proc/{acceptor}/fd"))
    for _ in range(50):
        server_pid_of_connection(two_processes.socket_path)
    for _ in range(5):  # short-lived peers: each pinned, then forgotten when it exits
        subprocess.run(
            [
                "python3",
                "-c",
                f"import socket; socket.socket(socket.AF_UNIX).connect({two_processes.socket_path!r})",
            ],
            check=True,
            timeout=30,
        )
    # <=: the baseline may still include the first connection, kept until its acknowledgement is read.
    wait_until(lambda: len(os.listdir(f"/proc/{acceptor}/fd")) <= baseline)
