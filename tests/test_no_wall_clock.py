"""No test asserts a wall-clock bound: under load any bound fails, and speed is measured by bench/
(ratios in one run, instruction counts). Tests inject the clock or count round trips instead."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# An assertion that compares (< or >) with a measured time.
TIMED = re.compile(
    r"assert\b(?=[^\n]*[<>])[^\n]*\b(elapsed|duration|took|monotonic\(\)|perf_counter\(\)|time\.time\(\))"
)


def test_no_test_asserts_how_long_something_took() -> None:
    found = [
        f"{path.relative_to(TESTS)}:{number}: {line.strip()}"
        for path in sorted(TESTS.rglob("*.py"))
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if TIMED.search(line)
    ]
    assert found == []


# Lines the check must and must not see; "assert" is joined in so that this file is not itself a hit.
ASSERT = "assert"
TIMED_LINES = (
    f"    {ASSERT} time.monotonic() - started < 10",
    f"{ASSERT} elapsed < TIMEOUT_MS / 1000",
    f"{ASSERT} time.time() - start > 0.5",
)
UNTIMED_LINES = (
    f"{ASSERT} clock.error_ms(102) < rough",  # an injected clock's values
    f'{ASSERT} store.usage("acme", int(time.time()))',  # a time, not a bound
)


def test_the_check_sees_a_timed_assertion_and_only_that() -> None:
    assert all(TIMED.search(line) for line in TIMED_LINES)
    assert not any(TIMED.search(line) for line in UNTIMED_LINES)
