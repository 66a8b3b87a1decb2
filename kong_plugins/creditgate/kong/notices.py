"""What an operator must act on, said once per cause through Kong's own log, and the plugin server's
stderr for the rest."""

from __future__ import annotations

import sys
import threading
from typing import Any

from creditgate.errors import StoreRefused
from creditgate.store.replies import WRITE_FAULTS


def to_stderr(message: str) -> None:
    """A line in the plugin server's stderr.

    Kong's process manager merges it into Kong's error log at INFO (process.lua, raw_log(ngx_INFO,
    ...)): below Kong's default log_level, notice. What an operator must act on goes through NOTICES
    as well.
    """
    print(f"[credit-gate] {message}", file=sys.stderr, flush=True)


class Notices:
    """What an operator must act on, said once per cause through Kong's own log at its own level.

    Lines the plugin server prints reach Kong's error log at INFO only, which Kong's default level
    (notice) drops. So each cause (an invalid configuration, the circuit opening or closing, a failed
    log phase) is queued once and written with ``kong.log.<level>`` by the next event of this process:
    one PDK call more for that one request, none while nothing is pending.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._said: set[str] = set()
        self._pending: list[tuple[str, str]] = []
        self.pending = False  # read without the lock on every request: a stale False only delays

    def say(self, cause: str, level: str, message: str) -> None:
        to_stderr(message)
        with self._lock:
            if cause in self._said:
                return
            self._said.add(cause)
            self._pending.append((level, f"credit-gate: {message}"))
            self.pending = True

    def forget(self, cause: str) -> None:
        """Let the cause be said again (the circuit closed: its next opening is news)."""
        with self._lock:
            self._said.discard(cause)

    def flush(self, kong: Any) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self.pending = False
        for level, message in pending:
            getattr(kong.log, level)(message)


NOTICES = Notices()


def store_refused(error: StoreRefused) -> None:
    """Redis refuses writes (READONLY, OOM, MISCONF, ...): said once per code, at err, until the circuit
    closes again (``store_recovered``). Without it the only sign would be a line per request."""
    NOTICES.say(
        f"refused:{error.code}",
        "err",
        f"{error}; requests are answered as in a Redis outage (503 store_unavailable, or passed "
        "unmetered with fault_tolerant) until Redis takes writes again",
    )


def store_recovered() -> None:
    """The circuit closed: a write fault that comes back is news again."""
    for code in WRITE_FAULTS:
        NOTICES.forget(f"refused:{code}")
