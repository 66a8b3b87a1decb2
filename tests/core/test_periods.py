"""Billing periods, with plain values."""

from __future__ import annotations

import datetime as dt

from creditgate.core.periods import DAY_SECONDS, WEEK_SECONDS, Period, Window, add_months, window_at


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, minute, tzinfo=dt.timezone.utc).timestamp())


def test_a_daily_period_starts_at_the_anchor_time_of_day() -> None:
    anchor = at(2026, 3, 1, 9, 30)
    assert window_at(Period.DAY, anchor, at(2026, 3, 5, 8, 0)) == Window(
        at(2026, 3, 4, 9, 30), at(2026, 3, 5, 9, 30)
    )


def test_a_period_ends_exactly_where_the_next_begins() -> None:
    anchor = at(2026, 3, 1)
    first = window_at(Period.WEEK, anchor, anchor + WEEK_SECONDS - 1)
    second = window_at(Period.WEEK, anchor, anchor + WEEK_SECONDS)
    assert first.end == second.start == anchor + WEEK_SECONDS


def test_a_monthly_period_keeps_the_anchor_day() -> None:
    anchor = at(2026, 1, 15, 12)
    assert window_at(Period.MONTH, anchor, at(2026, 6, 20)) == Window(
        at(2026, 6, 15, 12), at(2026, 7, 15, 12)
    )


def test_a_monthly_period_anchored_on_the_31st_is_clamped_to_short_months() -> None:
    anchor = at(2026, 1, 31, 10)
    assert window_at(Period.MONTH, anchor, at(2026, 2, 27)) == Window(anchor, at(2026, 2, 28, 10))
    assert window_at(Period.MONTH, anchor, at(2026, 3, 1)) == Window(at(2026, 2, 28, 10), at(2026, 3, 31, 10))


def test_a_leap_february_has_29_days() -> None:
    assert add_months(at(2028, 1, 30), 1) == at(2028, 2, 29)


def test_before_the_anchor_the_period_ending_at_the_anchor_applies() -> None:
    anchor = at(2026, 5, 1)
    assert window_at(Period.DAY, anchor, anchor - 10) == Window(anchor - DAY_SECONDS, anchor)
    assert window_at(Period.MONTH, anchor, at(2026, 4, 11)) == Window(at(2026, 4, 1), anchor)
    assert window_at(Period.MONTH, at(2026, 3, 31), at(2026, 2, 10)) == Window(
        at(2026, 1, 31), at(2026, 2, 28)
    )


def test_a_period_never_starts_after_now() -> None:
    for period in (Period.DAY, Period.WEEK, Period.MONTH):
        for now in range(at(2026, 1, 1), at(2026, 9, 1), 86_400 * 3 + 7_777):
            window = window_at(period, at(2026, 6, 15, 12), now)
            assert window.start <= now < window.end


def test_a_period_of_none_never_ends() -> None:
    assert window_at(Period.NONE, 100, 10**9) == Window(100, 0)


def test_monthly_periods_across_a_year_end() -> None:
    anchor = at(2026, 11, 30)
    assert window_at(Period.MONTH, anchor, at(2027, 1, 5)) == Window(at(2026, 12, 30), at(2027, 1, 30))
