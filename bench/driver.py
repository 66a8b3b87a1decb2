"""The Kong side of the benchmark: a lean load driver that speaks Kong's plugin-server protocol.

What it plays, from Kong 3.9's ``kong/runloop/plugin_servers/rpc/mp_rpc.lua``:

- MessagePack-RPC over the server's unix socket: ``[0, msgid, method, [arg]]`` out,
  ``[1, msgid, err, result]`` back. Every call borrows a connection from the worker's keepalive pool
  and returns it after the answer, so the calls of one request may use different connections.
- An event is ``plugin.HandleEvent {InstanceId, EventName}``; while the answer's ``Data`` is not
  ``"ret"`` it is a PDK call, answered with ``plugin.StepConsumer`` for ``get_consumer`` and plain
  ``plugin.Step`` for the setters, each ``{EventId, Data}`` (``Data`` absent when the PDK function
  returned nil, as in the Lua table Kong encodes). ``kong.response.exit`` ends the event: Kong sends
  no further Step.

Each PDK round trip is one RPC call; the driver counts them. The measured quantity is on the server's
side, but the driver shares the CPUs with it, so it is kept cheap: several worker processes (no
shared GIL), each an epoll loop of small state machines, one per request in flight, with no
per-call work beyond packing, unpacking and a clock read.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing
import os
import selectors
import socket
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import msgpack

from bench.procs import process_tree

ACCESS = "access"

# mp_rpc.lua's get_step_method, for the PDK calls a gate makes.
_STEP_METHOD = {
    "kong.client.get_consumer": "plugin.StepConsumer",
    "kong.client.load_consumer": "plugin.StepConsumer",
    "kong.client.get_credential": "plugin.StepCredential",
}
_PLAIN_STEP = frozenset(
    {
        "kong.service.request.set_headers",
        "kong.service.request.set_header",
        "kong.service.request.clear_header",
        "kong.response.set_headers",
        "kong.response.set_header",
    }
)
_EXIT = frozenset({"kong.response.exit", "kong.response.error"})
# What the simulated request answers to the request getters a gate may read.
_REQUEST: dict[str, Any] = {
    "kong.request.get_method": "GET",
    "kong.request.get_path": "/bench",
    "kong.request.get_header": None,
    "kong.service.set_upstream": True,
}
_REQUEST_ID = "kong.nginx.get_var"  # $request_id (bypass_witness): one of its own per request


class RpcError(Exception):
    """The plugin server answered an error, broke the protocol or closed the connection."""


@dataclass(frozen=True)
class Target:
    """One plugin entity on one plugin server: each driver process starts its own instance of it, as
    each nginx worker does (a server of several processes keeps a worker's instances in the process its
    connections are pinned to, so an instance started elsewhere would not be found)."""

    socket_path: str
    name: str
    config: str  # StartInstance's Config: the JSON Kong sends


@dataclass(frozen=True)
class Job:
    """What one worker runs: ``requests`` access events, ``concurrency`` of them in flight at a time."""

    targets: tuple[Target, ...]
    consumer: dict[str, Any] | None
    requests: int
    concurrency: int
    timeout: float
    target_offset: int = 0
    # A server's pid: before each message, wait until every thread of it and of its children sleeps,
    # so that the message finds the server waiting for it. A server that finds a message already there
    # reads it without waiting, a shorter path: otherwise the instructions per request would depend on
    # who was quicker (``--instructions``, at 1 in flight). 0: send at once.
    wait_idle: int = 0


@dataclass
class JobResult:
    """What happened, as Kong would see it. Status 200 means proxied; others are the exit status."""

    completed: int = 0
    errors: int = 0
    first_error: str | None = None
    statuses: dict[int, int] = field(default_factory=dict)
    round_trips: int = 0
    latencies_ns: array[int] = field(default_factory=lambda: array("q"))
    sample_calls: list[tuple[str, list[Any]]] = field(default_factory=list)
    exit_sample: list[Any] | None = None
    started: float = 0.0
    ended: float = 0.0
    cpu_seconds: float = 0.0
    timed_out: bool = False


# The sync client: instance management, from the benchmark's own process.


def rpc_call(socket_path: str, method: str, arg: Any, timeout: float = 10.0) -> Any:
    """One call on a fresh connection (``plugin.StartInstance``, ``plugin.CloseInstance``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(msgpack.packb([0, 1, method, [arg]]))
        return read_reply(sock, msgpack.Unpacker(raw=False, strict_map_key=False), method)


def read_reply(sock: socket.socket, unpacker: Any, method: str) -> Any:
    """The next reply on a connection (requests' notifications skipped): its result, or RpcError."""
    while True:
        for message in unpacker:
            if message[0] != 1:
                continue
            if message[2] is not None:
                raise RpcError(f"{method}: {message[2]}")
            return message[3]
        chunk = sock.recv(65536)
        if not chunk:
            raise RpcError(f"{method}: connection closed")
        unpacker.feed(chunk)


# The driver inside each worker process: an epoll loop of small state machines, one per request in
# flight. No futures, tasks or callbacks scheduled per call: an answer is read, decoded and followed by
# the next call in one pass.


class _Conn:
    """One keepalive connection to a plugin server; one call at a time, as Kong uses a cosocket."""

    __slots__ = ("msg_id", "path", "slot", "sock", "unpacker")

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.slot: _Slot | None = None
        self.msg_id = 0


class _Slot:
    """One request in flight: the event it is in and what it has done so far."""

    __slots__ = ("event_id", "instance_id", "started", "status", "target", "trips")

    def __init__(self, target: Target, instance_id: int) -> None:
        self.target = target
        self.instance_id = instance_id
        self.event_id = 0
        self.started = 0
        self.status = 200
        self.trips = 0


class _Driver:
    def __init__(self) -> None:
        self.selector = selectors.EpollSelector()
        self.idle: dict[str, list[_Conn]] = {}
        self.msg_ids = itertools.count(1)
        self.job: Job | None = None
        self.result = JobResult()
        self.consumer: dict[str, Any] | None = None
        self.remaining = 0
        self.active = 0
        self.sampled: _Slot | None = None
        self.idle_stats: list[str] = []  # /proc stat files of the server's threads (Job.wait_idle)
        self.instances: dict[Target, int] = {}  # this process's instances, kept between jobs

    def instance_id(self, target: Target, timeout: float) -> int:
        """plugin.lua's get_instance_id: started once per worker, on its first use."""
        known = self.instances.get(target)
        if known is None:
            answer = rpc_call(
                target.socket_path,
                "plugin.StartInstance",
                {"Name": target.name, "Config": target.config},
                timeout,
            )
            known = self.instances[target] = int(answer["Id"])
        return known

    def close_all(self) -> None:
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self.idle.clear()

    # Kong's Rpc:call, split in two: send now, take the answer when epoll says it is there.

    def _send(self, slot: _Slot, method: str, arg: Any) -> None:
        path = slot.target.socket_path
        idle = self.idle.setdefault(path, [])
        if idle:
            conn = idle.pop()
        else:
            try:
                conn = _Conn(path)
            except OSError as error:
                raise RpcError(f"trying to connect: {error}") from error
            self.selector.register(conn.sock, selectors.EVENT_READ, conn)
        conn.slot = slot
        conn.msg_id = next(self.msg_ids)
        slot.trips += 1
        if self.idle_stats:
            _wait_idle(self.idle_stats)
        try:
            conn.sock.sendall(msgpack.packb([0, conn.msg_id, method, [arg]]))
        except OSError as error:
            self._drop(conn)
            raise RpcError(f"{method}: {error}") from error

    def _drop(self, conn: _Conn) -> None:
        self.selector.unregister(conn.sock)
        conn.sock.close()

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except OSError as error:
            data, reason = b"", str(error)
        else:
            reason = "connection closed by the plugin server"
        if not data:
            self._drop(conn)
            if conn.slot is not None:
                self._failed(conn.slot, RpcError(reason))
            return
        conn.unpacker.feed(data)
        for message in conn.unpacker:
            if message[0] == 2:  # a notification [2, label, args]: Kong logs it
                continue
            slot, conn.slot = conn.slot, None
            if slot is None or message[0] != 1 or message[1] != conn.msg_id:
                self._drop(conn)
                if slot is not None:
                    self._failed(slot, RpcError(f"unexpected RPC message {message!r}"))
                return
            self.idle[conn.path].append(conn)  # back to the keepalive pool
            try:
                if message[2] is not None:
                    raise RpcError(str(message[2]))
                self._answer(slot, message[3])
            except RpcError as error:
                self._failed(slot, error)

    # The event, as mp_rpc.lua's handle_event and bridge_loop run it.

    def _start(self, slot: _Slot) -> None:
        while self.remaining > 0:
            self.remaining -= 1
            slot.trips = 0
            slot.status = 200
            slot.started = time.perf_counter_ns()
            try:
                self._send(slot, "plugin.HandleEvent", {"InstanceId": slot.instance_id, "EventName": ACCESS})
                return
            except RpcError as error:
                self._count_error(error)
        self.active -= 1

    def _answer(self, slot: _Slot, answer: Any) -> None:
        result = self.result
        slot.event_id = answer["EventId"]
        data = answer["Data"]
        if data != "ret":
            method = data["Method"]
            args = data.get("Args") or []
            if slot is self.sampled:
                result.sample_calls.append((method, args))
            if method not in _EXIT:
                step = _STEP_METHOD.get(method)
                value: Any
                if step is not None:
                    value = self.consumer if step == "plugin.StepConsumer" else None
                elif method in _PLAIN_STEP or method.startswith("kong.log."):
                    step, value = "plugin.Step", None
                elif method in _REQUEST:
                    step, value = "plugin.Step", _REQUEST[method]
                elif method == _REQUEST_ID:
                    step, value = "plugin.Step", os.urandom(16).hex()
                else:
                    raise RpcError(f"the benchmark does not answer {method}")
                # A nil result is an absent key in the Lua table Kong encodes.
                step_in = (
                    {"EventId": slot.event_id} if value is None else {"EventId": slot.event_id, "Data": value}
                )
                self._send(slot, step, step_in)
                return
            slot.status = int(args[0]) if args else 500
            if result.exit_sample is None:
                result.exit_sample = list(args)
            # The delayed response is stored: Kong sends no further Step for this event.
        result.latencies_ns.append(time.perf_counter_ns() - slot.started)
        result.round_trips += slot.trips
        result.statuses[slot.status] = result.statuses.get(slot.status, 0) + 1
        result.completed += 1
        if slot is self.sampled:
            self.sampled = None  # the PDK calls of the first request are enough
        self._start(slot)

    def _count_error(self, error: Exception) -> None:
        self.result.errors += 1
        self.result.completed += 1
        self.result.first_error = self.result.first_error or f"{type(error).__name__}: {error}"

    def _failed(self, slot: _Slot, error: Exception) -> None:
        self._count_error(error)
        if slot is self.sampled:
            self.sampled = None
            self.result.sample_calls.clear()
        self._start(slot)

    def run(self, job: Job) -> JobResult:
        self.result = result = JobResult()
        self.consumer = job.consumer
        self.remaining = job.requests
        self.idle_stats = _thread_stats(job.wait_idle) if job.wait_idle else []
        targets = job.targets
        try:
            ids = {t: self.instance_id(t, job.timeout) for t in targets}
        except (OSError, RpcError, KeyError, TypeError, ValueError) as error:
            result.errors = result.completed = job.requests
            result.first_error = f"starting the instance: {type(error).__name__}: {error}"
            return result
        chosen = [targets[(job.target_offset + i) % len(targets)] for i in range(job.concurrency)]
        slots = [_Slot(target, ids[target]) for target in chosen]
        self.active = len(slots)
        self.sampled = slots[0] if slots else None
        cpu = time.process_time()
        result.started = time.monotonic()
        deadline = result.started + job.timeout
        for slot in slots:
            self._start(slot)
        while self.active > 0:
            left = deadline - time.monotonic()
            events = self.selector.select(left) if left > 0 else []
            if not events and time.monotonic() >= deadline:
                result.timed_out = True
                self.close_all()  # answers may still be in flight on these connections
                break
            for key, _ in events:
                self._readable(key.data)
        result.ended = time.monotonic()
        result.cpu_seconds = time.process_time() - cpu
        return result


def _thread_stats(pid: int) -> list[str]:
    """The ``/proc`` stat file of every thread of ``pid`` and of its descendants."""
    return [f"/proc/{p}/task/{tid}/stat" for p in process_tree(pid) for tid in os.listdir(f"/proc/{p}/task")]


def _wait_idle(stats: list[str], bound: float = 10.0) -> None:
    """Until every thread is asleep (state S: in a system call that waits), for at most ``bound``
    seconds; a thread that has exited counts as asleep."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        for path in stats:
            try:
                with open(path, "rb") as f:
                    text = f.read()
            except OSError:
                continue
            if text[text.rindex(b")") + 2 : text.rindex(b")") + 3] != b"S":
                break
        else:
            return
        time.sleep(0.0002)


def _worker_main(pipe: Connection) -> None:
    """A driver process: runs the jobs it is sent, keeping its keepalive pools between them."""
    driver = _Driver()
    try:
        while True:
            job = pipe.recv()
            if job is None:
                break
            pipe.send(driver.run(job))
    finally:
        driver.close_all()


# The parent's handle on the worker processes.


@dataclass
class Run:
    """The merged results of one job split across the workers."""

    requests: int
    completed: int
    errors: int
    first_error: str | None
    statuses: dict[int, int]
    round_trips: int
    latencies_ns: list[int]
    sample_calls: list[tuple[str, list[Any]]]
    exit_sample: list[Any] | None
    wall_seconds: float
    driver_cpu_seconds: float
    timed_out: bool
    pids: list[int]

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile of the request latencies, in milliseconds."""
        if not self.latencies_ns:
            return float("nan")
        index = min(len(self.latencies_ns) - 1, max(0, math.ceil(q * len(self.latencies_ns)) - 1))
        return self.latencies_ns[index] / 1e6


class LoadDriver:
    """``processes`` worker processes; a run spreads its requests in flight over them."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        for i in range(max(1, processes)):
            mine, theirs = context.Pipe()
            process = context.Process(
                target=_worker_main, args=(theirs,), name=f"bench-driver-{i}", daemon=True
            )
            process.start()
            theirs.close()
            self._workers.append((process, mine))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self._workers if p.pid is not None]

    def run(
        self,
        targets: Sequence[Target],
        consumer: dict[str, Any] | None,
        requests: int,
        concurrency: int,
        timeout: float,
        wait_idle: int = 0,
    ) -> Run:
        """``requests`` events with ``concurrency`` in flight in total; bounded by ``timeout`` seconds;
        ``wait_idle``: see ``Job``."""
        used = self._workers[: max(1, min(len(self._workers), concurrency))]
        n = len(used)
        shares = [concurrency // n + (1 if i < concurrency % n else 0) for i in range(n)]
        counts = [requests * s // concurrency for s in shares]
        counts[0] += requests - sum(counts)
        offset = 0
        for (_, pipe), share, count in zip(used, shares, counts, strict=True):
            pipe.send(Job(tuple(targets), consumer, count, share, timeout, offset, wait_idle))
            offset += share
        results: list[JobResult] = []
        for process, pipe in used:
            if not pipe.poll(timeout + 30):
                raise RuntimeError(f"driver process {process.pid} did not report within {timeout + 30:.0f}s")
            results.append(pipe.recv())
        statuses: dict[int, int] = {}
        for r in results:
            for status, count in r.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
        latencies = sorted(itertools.chain.from_iterable(r.latencies_ns for r in results))
        first = results[0]
        return Run(
            requests=requests,
            completed=sum(r.completed for r in results),
            errors=sum(r.errors for r in results),
            first_error=next((r.first_error for r in results if r.first_error), None),
            statuses=dict(sorted(statuses.items())),
            round_trips=sum(r.round_trips for r in results),
            latencies_ns=latencies,
            sample_calls=first.sample_calls,
            exit_sample=next((r.exit_sample for r in results if r.exit_sample is not None), None),
            wall_seconds=max(r.ended for r in results) - min(r.started for r in results),
            driver_cpu_seconds=sum(r.cpu_seconds for r in results),
            timed_out=any(r.timed_out for r in results),
            pids=[p.pid for p, _ in used if p.pid is not None],
        )

    def close(self) -> None:
        for _, pipe in self._workers:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process, pipe in self._workers:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)
            pipe.close()

    def __enter__(self) -> LoadDriver:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
