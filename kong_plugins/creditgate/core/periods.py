"""Billing periods: when an allowance starts and ends.

Periods are anchored on a subscription's anchor instant, in UTC, and computed from that anchor and
"now" alone, so the charge script can roll a period over lazily on the first request after it ends.
A period never starts after "now": the lattice of periods extends before the anchor too.
The same arithmetic is written in Lua in ``store/lua/charge.lua``; the tests hold the two together.

A monthly period keeps the anchor's day of month and time of day, clamped to the month's length
(anchored on the 31st: Jan 31, Feb 28, Mar 31, ...), as billing systems do.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

DAY_SECONDS = 86_400
WEEK_SECONDS = 7 * DAY_SECONDS


class Period(str, enum.Enum):
    """How often a plan's included allowance is renewed."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    NONE = "none"  # granted once, for the whole subscription


@dataclass(frozen=True)
class Window:
    """One billing period: ``start <= t < end``; ``end`` is 0 for a period that never ends."""

    start: int
    end: int


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """The (year, month, day) of a count of days since 1970-01-01."""
    days += 719_468
    era = (days if days >= 0 else days - 146_096) // 146_097
    doe = days - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def days_in_month(year: int, month: int) -> int:
    if month == 12:
        return 31
    return days_from_civil(year, month + 1, 1) - days_from_civil(year, month, 1)


def add_months(anchor: int, months: int) -> int:
    """The instant ``months`` calendar months after ``anchor``, day clamped to the month's end."""
    days, second_of_day = divmod(anchor, DAY_SECONDS)
    year, month, day = civil_from_days(days)
    month_index = year * 12 + (month - 1) + months
    year, month = divmod(month_index, 12)
    month += 1
    day = min(day, days_in_month(year, month))
    return days_from_civil(year, month, day) * DAY_SECONDS + second_of_day


def window_at(period: Period, anchor: int, now: int) -> Window:
    """The period that contains ``now``, in the anchor's lattice: before the anchor as after it.

    An anchor in the future (the next renewal date a billing system sends) puts ``now`` in the period
    that ends at the anchor, never in a period that starts after ``now``.
    """
    if period is Period.NONE:
        return Window(anchor, 0)
    if period is Period.DAY or period is Period.WEEK:
        length = DAY_SECONDS if period is Period.DAY else WEEK_SECONDS
        start = anchor + (now - anchor) // length * length
        return Window(start, start + length)
    anchor_year, anchor_month, _ = civil_from_days(anchor // DAY_SECONDS)
    now_year, now_month, _ = civil_from_days(now // DAY_SECONDS)
    months = (now_year - anchor_year) * 12 + (now_month - anchor_month)
    start = add_months(anchor, months)
    if start > now:
        months -= 1
        start = add_months(anchor, months)
    return Window(start, add_months(anchor, months + 1))
