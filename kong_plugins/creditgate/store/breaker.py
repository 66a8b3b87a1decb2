"""A circuit breaker in front of Redis, so that an outage costs one timeout, not one per request.

Without it every request during an outage waits the whole connect or read timeout before the gate
answers 503 (or passes it through with ``fault_tolerant``): at a few thousand requests a second that
stalls every worker thread of the plugin server, and Kong's own 60 s RPC timeout then proxies requests
unpaid. With it, after ``failures`` consecutive failures the gate stops asking Redis for ``cooldown_ms``
and answers at once; then a single request probes Redis while the others still answer at once; the
probe's success closes the circuit, its failure opens it for another cool-down.

::

    closed --failures in a row--> open --cool-down--> half-open --probe ok--> closed
                                   ^                      |
                                   +-----probe failed-----+

The breaker adds no Redis round trip: the probe is an ordinary request. It holds no Redis client
and knows nothing of Kong; the store asks it before each call and tells it how the call went.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Thread-safe: kong-pdk runs each event in its own thread, and instances share one store.

    ``failures`` 0 turns the breaker off (every call goes to Redis). ``on_change(old, new, why)`` is
    told of each transition, outside the lock, so that operators see the circuit open and close in
    the log once rather than a line per request.
    """

    def __init__(
        self,
        failures: int,
        cooldown_ms: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState, BreakerState, str], None] | None = None,
    ) -> None:
        if failures < 0 or cooldown_ms < 0:
            raise ValueError("failures and cooldown_ms must not be negative")
        self.failures = failures
        self.enabled = failures > 0  # read on every request: an attribute, not a property
        self.cooldown_s = cooldown_ms / 1000
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self.changes = 0  # transitions so far, for the node report (node_report.py)
        # True while there is nothing to ask or tell: off, or closed with no failure counted. Read
        # without the lock on every request, so that a healthy Redis costs the breaker no call.
        self.calm = True

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state

    def allow(self) -> bool:
        """May this call go to Redis? True for every call while closed, for one probe once cooled down."""
        state = self._state  # no lock while closed (a racing opening lets one more by)
        if not self.enabled or state is BreakerState.CLOSED:
            return True
        change = None
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                if self._clock() - self._opened_at < self.cooldown_s:
                    return False
                change = self._move(BreakerState.HALF_OPEN)
            if self._probing:  # half-open: one probe at a time, the others answer at once
                allowed = False
            else:
                self._probing = allowed = True
        self._notify(change, "cool-down over, the next request probes Redis")
        return allowed

    def retry_after_ms(self) -> int:
        """Milliseconds until the next probe may go, 0 when it may go now."""
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return 0
            left = self.cooldown_s - (self._clock() - self._opened_at)
            return max(0, int(left * 1000))

    def succeeded(self) -> None:
        """Redis answered: a reply, or an error reply that is no outage (bad data, a wrong command)."""
        if self.calm:
            return  # nothing to reset: the common case, without the lock
        change = None
        with self._lock:
            self._consecutive = 0
            self._probing = False
            if self._state is not BreakerState.CLOSED:
                change = self._move(BreakerState.CLOSED)
            self.calm = True
        self._notify(change, "Redis answered, charging resumes")

    def failed(self) -> None:
        """Redis could not be reached, did not answer in time, or refuses writes (READONLY, OOM,
        MISCONF, LOADING, BUSY, MASTERDOWN: store/replies.py's WRITE_FAULTS)."""
        if not self.enabled:
            return
        change = None
        why = ""
        with self._lock:
            self._consecutive += 1
            self.calm = False
            if self._state is BreakerState.HALF_OPEN:
                self._probing = False
                self._opened_at = self._clock()
                change = self._move(BreakerState.OPEN)
                why = "the probe failed"
            elif self._state is BreakerState.CLOSED and self._consecutive >= self.failures:
                self._opened_at = self._clock()
                change = self._move(BreakerState.OPEN)
                why = f"{self._consecutive} Redis failures in a row"
        self._notify(change, f"{why}; requests are answered without Redis for {self.cooldown_s:g} s")

    def _move(self, new: BreakerState) -> tuple[BreakerState, BreakerState]:
        old, self._state = self._state, new
        self.changes += 1
        return old, new

    def _notify(self, change: tuple[BreakerState, BreakerState] | None, why: str) -> None:
        if change and self._on_change:
            self._on_change(change[0], change[1], why)
