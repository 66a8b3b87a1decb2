"""What only the plugin server knows, published in Redis for the service's /metrics.

The circuit breaker's state and the Redis errors the plugin server met live in its memory; the
service scrapes Redis, not the plugin servers. So each store counts its Redis errors by cause where
the failure is already handled (nothing on the success path), and a daemon thread writes the counts
every ``CREDIT_GATE_NODE_REPORT_SECONDS`` (default 10, 0 turns it off) into the node's report, which
expires after a few intervals (the keys and the writing: store/nodes.py).

A node is one store of one plugin server process (``node_id``): instances share a store per Redis
and breaker setting, and each store has a breaker and error counts of its own.

A write that fails is ignored: the breaker already reports the outage, and the counts are cumulative,
so the next write carries them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import socket
import threading
import time

from creditgate.store.store import RedisStore

INTERVAL_ENV = "CREDIT_GATE_NODE_REPORT_SECONDS"
DEFAULT_INTERVAL = 10.0
TTL_INTERVALS = 3  # a node that missed three writes is gone


# Numbers the reports of this process. Instances with other Redis or breaker settings have a store
# (and a breaker) of their own, often on the same Redis and prefix: under one node id per process
# their reports would overwrite each other's, and the scrape would show whichever wrote last.
_REPORTS = itertools.count(1)


def node_id() -> str:
    """hostname:pid:n, unique per store of a plugin server process (each of ``--processes`` has its
    own pid, each store of a process its own n)."""
    return f"{socket.gethostname()}:{os.getpid()}:{next(_REPORTS)}"


MAX_INTERVAL = 3600.0  # an hour: beyond it a report says nothing useful (and a wait overflows at inf)


def interval_from_env() -> float:
    """The setting, within [0, MAX_INTERVAL]; one that does not parse, or is not finite, is the default."""
    try:
        interval = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    if not math.isfinite(interval):
        return DEFAULT_INTERVAL
    return min(max(0.0, interval), MAX_INTERVAL)


class NodeReporter:
    """A daemon thread writing one store's counts every ``interval`` seconds until ``stop``.

    The thread waits on a lock held from the start, not in a sleep, so that it ends as soon as the
    store closes rather than up to an interval later. ``stop`` only releases that lock, which never
    waits: it is called from a garbage-collector finalizer, which may run in any thread, this one
    included, at any point. (``Event.set`` would take the event's own lock, which the waiting thread
    holds for a moment on each wake-up: a finalizer run there would wait on its own thread for ever.)
    """

    def __init__(self, store: RedisStore, interval: float, node: str | None = None) -> None:
        self.store = store
        self.interval = interval
        self.node = node or node_id()
        self._stopped = False
        self._wake = threading.Lock()
        self._wake.acquire()  # released by stop(); the thread's wait on it times out each interval
        self._thread: threading.Thread | None = None

    @property
    def stopped(self) -> bool:
        return self._stopped

    def start(self) -> None:
        if self.interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="credit-gate-node-report", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(RuntimeError):  # released already: a second stop
            self._wake.release()

    def _run(self) -> None:
        # The first write waits one interval: a store opened and closed at once leaves nothing.
        while not self._wake.acquire(timeout=self.interval) and not self._stopped:
            with contextlib.suppress(Exception):  # ignored: the breaker reports outages
                self.write()

    def fields(self) -> dict[str, str | int | float]:
        store = self.store
        breaker = store.breaker
        fields: dict[str, str | int | float] = {
            "breaker": breaker.state.value if breaker is not None and breaker.enabled else "off",
            "breaker_changes": breaker.changes if breaker is not None else 0,
            "written_at": round(time.time(), 3),
        }
        for cause, value in store.redis_errors.counts.items():
            fields[f"errors:{cause}"] = value
        voids = store.voider.counts  # charges whose reply never came back (store/voids.py)
        fields.update(
            {
                "voids:voided": voids.voided,
                "voids:given_back": voids.given_back,
                "voids:gave_up": voids.gave_up,
                "voids:pending": store.voider.pending(),
            }
        )
        return fields

    def write(self) -> None:
        ttl = max(1, int(self.interval * TTL_INTERVALS + 0.999))
        self.store.write_node_report(self.node, self.fields(), ttl)
