"""Redis's clock as this host knows it: what a charge's deadline is measured on."""

from __future__ import annotations

import math

from creditgate.errors import StoreTimeout


class RedisClock:
    """The offset between this host's clock and Redis's, with a bound on its error.

    A charge carries a deadline on Redis's clock, after which the caller has given up. Each charge's
    reply carries Redis's time, from which the offset is kept up to date at no extra round trip; the
    first charge of a store learns it with one TIME call first (``RedisStore.charge``). A sample's
    error is at most half its round trip (Redis read its clock somewhere between the send and the
    receive); an estimate ages by ``DRIFT`` of the time since it was taken. A sample replaces the
    estimate when it is at least as precise, or when the two cannot both be right (Redis's clock was
    stepped, or a failover reached a master with another clock). The deadline sent is the caller's
    give-up time minus the error: a charge Redis runs after the caller stopped waiting never applies,
    however slow the round trips.
    """

    DRIFT = 1e-4  # 100 ppm: how fast two clocks may drift apart, and then some

    def __init__(self) -> None:
        self.offset_ms: float | None = None
        self._error_ms = math.inf
        self._taken_ms = 0.0

    def error_ms(self, now_ms: float) -> float:
        if self.offset_ms is None:
            return math.inf
        return self._error_ms + abs(now_ms - self._taken_ms) * self.DRIFT

    def redis_seconds(self, now_ms: float) -> float | None:
        """Redis's time (Unix seconds) at this host's ``now_ms``, None while the offset is unknown."""
        return None if self.offset_ms is None else (now_ms + self.offset_ms) / 1000

    def observe(self, redis_ms: int, sent_ms: float, received_ms: float) -> None:
        error = (
            (received_ms - sent_ms) / 2 + 1 if received_ms > sent_ms else 1
        )  # + 1: Redis's ms are truncated
        offset = redis_ms - (sent_ms + received_ms) / 2
        known = self.offset_ms
        if known is not None:  # error_ms, inline: the charge calls this every time
            current = self._error_ms + abs(received_ms - self._taken_ms) * self.DRIFT
            if error > current and abs(offset - known) <= error + current:
                return
        self.offset_ms, self._error_ms, self._taken_ms = offset, error, received_ms

    def deadline(self, sent_ms: float, budget_ms: float) -> int:
        """The Redis time after which a charge sent at ``sent_ms`` must not apply (>= 1: always a
        deadline); 0 only without a budget (a caller that waits for ever). Needs an offset."""
        if budget_ms <= 0:
            return 0
        offset = self.offset_ms
        if offset is None:
            raise StoreTimeout("Redis's clock is not known yet; nothing was charged")
        error = self._error_ms + abs(sent_ms - self._taken_ms) * self.DRIFT  # error_ms, inline
        deadline = int(sent_ms + offset + budget_ms - error)
        return deadline if deadline > 1 else 1
