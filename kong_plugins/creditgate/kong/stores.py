"""The Redis stores of this process's plugin instances: one per distinct Redis setting, shared, and
closed when the last instance using it is dropped."""

from __future__ import annotations

import collections
import threading
import time
import weakref
from collections.abc import Callable

from creditgate.core.config import GateConfig, RedisSettings
from creditgate.kong import node_report
from creditgate.kong.node_report import NodeReporter
from creditgate.kong.notices import NOTICES, store_recovered, to_stderr
from creditgate.store.breaker import BreakerState, CircuitBreaker
from creditgate.store.store import RedisStore

StoreKey = tuple[RedisSettings, str, int, int, Callable[[], float]]


class StoreRegistry:
    """One Redis client (and its connection pool) per distinct Redis setting, shared by instances.

    Kong re-creates every plugin instance on any configuration change; sharing the pools keeps
    connections from churning each time. The store owns the circuit breaker, so every instance on
    one Redis sees the same circuit (instances with other breaker settings get a store of their own).

    A store lives as long as an instance uses it: each gate that takes one holds a claim, given back
    when kong-pdk drops the instance (CloseInstance, or its idle expiry), and the last claim closes the
    store's connections. Otherwise every change of a Redis setting (a password rotation, a timeout)
    would leave a live connection behind for the life of the process.

    ``breaker_clock`` is the circuit breaker's clock (seconds, monotonic): Kong's instances all share
    the default; a test that moves a clock of its own gets a store of its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[StoreKey, RedisStore] = {}
        self._claims: dict[StoreKey, int] = {}
        self._released: collections.deque[StoreKey] = collections.deque()  # given back, not yet counted

    def get(
        self, config: GateConfig, owner: object, breaker_clock: Callable[[], float] = time.monotonic
    ) -> RedisStore:
        """The store for these settings, claimed until ``owner`` is garbage: kong-pdk keeps no other
        handle on an instance's end (its idle expiry drops instances without a call)."""
        key = (
            config.redis,
            config.key_prefix,
            config.breaker_failures,
            config.breaker_cooldown_ms,
            breaker_clock,
        )
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                breaker = CircuitBreaker(
                    config.breaker_failures,
                    config.breaker_cooldown_ms,
                    clock=breaker_clock,
                    on_change=_breaker_changed,
                )
                store = RedisStore.from_settings(config.redis, config.key_prefix, breaker=breaker)
                store.reporter = NodeReporter(store, node_report.interval_from_env())
                store.reporter.start()  # stopped by store.close()
                self._stores[key] = store
            self._claims[key] = self._claims.get(key, 0) + 1
            unused = self._count_released()
        weakref.finalize(owner, self._release, key)
        self._close(unused)
        return store

    def _release(self, key: StoreKey) -> None:
        """A finalizer: it runs inside the garbage collector, which may have interrupted this very
        thread (or greenlet) anywhere, ``get`` with the lock held included. So it only queues the
        claim, and counts the queue if the lock is free at once; ``get`` counts whatever is left.
        Waiting for the lock here would wait for ever."""
        self._released.append(key)
        if not self._lock.acquire(blocking=False):
            return
        try:
            unused = self._count_released()
        finally:
            self._lock.release()
        self._close(unused)

    def _count_released(self) -> list[RedisStore]:
        """The stores whose last claim was given back (called with the lock held)."""
        unused: list[RedisStore] = []
        while self._released:
            key = self._released.popleft()
            left = self._claims.get(key, 0) - 1
            if left > 0:
                self._claims[key] = left
                continue
            self._claims.pop(key, None)
            store = self._stores.pop(key, None)
            if store is not None:
                unused.append(store)
        return unused

    @staticmethod
    def _close(stores: list[RedisStore]) -> None:
        for store in stores:
            try:
                store.close()
            except Exception as error:  # never into kong-pdk: a failed close only leaks what it leaked
                to_stderr(f"could not close a Redis store no instance uses: {type(error).__name__}: {error}")

    def open_stores(self) -> int:
        with self._lock:
            unused = self._count_released()
            count = len(self._stores)
        self._close(unused)
        return count


def _breaker_changed(old: BreakerState, new: BreakerState, why: str) -> None:
    # Said once per opening and once per closing, not per request and not per half-open probe.
    if new is BreakerState.CLOSED:
        NOTICES.forget("circuit:open")
        NOTICES.forget("circuit:closed")
        store_recovered()
        NOTICES.say("circuit:closed", "notice", f"Redis circuit {old.value} -> {new.value}: {why}")
    elif new is BreakerState.OPEN:
        NOTICES.say("circuit:open", "err", f"Redis circuit {old.value} -> {new.value}: {why}")
    else:
        to_stderr(f"Redis circuit {old.value} -> {new.value}: {why}")


STORES = StoreRegistry()
