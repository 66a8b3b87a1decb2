"""Values typed by operators or read from their files: credits and instants, parsed strictly.

Text is where floats sneak in: "1.5", "1e3", "true" and "1_000" are all refused as credits, because a
billing figure that Python would silently coerce is a figure nobody meant. Instants are RFC 3339 or
Unix seconds in, RFC 3339 UTC out, whatever the operator's locale.
"""

from __future__ import annotations

import datetime as dt
import re

from creditgate.core.model import MAX_CREDITS, shown
from creditgate.errors import InvalidDocument

_DIGITS = re.compile(r"^[0-9]+$")
_INSTANT_DIGITS = 12  # Unix seconds: 12 digits reach the year 33658
_FULL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def parse_credits(text: str, where: str = "amount", *, minimum: int = 0) -> int:
    """A whole number of credits written in decimal digits, within ``minimum..MAX_CREDITS``."""
    text = text.strip()
    if not _DIGITS.match(text):
        raise InvalidDocument(f"must be a whole number of credits in digits, got {shown(text)}", where)
    if len(text.lstrip("0")) > len(str(MAX_CREDITS)):  # out of range (and Python reads 4,300 digits at most)
        raise InvalidDocument(f"must be between {minimum} and {MAX_CREDITS}, got {shown(text)}", where)
    value = int(text)
    if not minimum <= value <= MAX_CREDITS:
        raise InvalidDocument(f"must be between {minimum} and {MAX_CREDITS}, got {value}", where)
    return value


def parse_instant(text: str, where: str = "time") -> int:
    """Unix seconds from RFC 3339 (``2026-01-31T12:00:00Z``, or a full date meaning 00:00 UTC) or digits."""
    text = text.strip()
    if _DIGITS.match(text):
        if len(text.lstrip("0")) > _INSTANT_DIGITS:
            raise InvalidDocument(f"is too far in the future for Unix seconds, got {shown(text)}", where)
        return int(text)
    if _FULL_DATE.match(text):
        text += "T00:00:00Z"
    if not _DATE_TIME.match(text):
        raise InvalidDocument(
            f"must be an RFC 3339 time with an offset (2026-01-31T12:00:00Z), a date (2026-01-31) "
            f"or Unix seconds, got {shown(text)}",
            where,
        )
    # Whole seconds are kept; dropping the fraction also keeps Python 3.10's fromisoformat happy.
    normalized = re.sub(r"\.\d+", "", text.replace(" ", "T").replace("t", "T"))
    if normalized[-1] in "Zz":
        normalized = normalized[:-1] + "+00:00"
    try:
        moment = dt.datetime.fromisoformat(normalized)
    except ValueError as error:
        raise InvalidDocument(f"is not a valid time ({error}), got {shown(text)}", where) from None
    seconds = int(moment.timestamp())
    if seconds < 0:
        raise InvalidDocument(f"must not be before 1970, got {shown(text)}", where)
    return seconds


def format_instant(epoch: int | None) -> str | None:
    """RFC 3339 in UTC, to the second; None for 0 or None (no such time)."""
    if not epoch:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_millis(millis: int) -> str:
    """RFC 3339 in UTC, to the millisecond: the precision of a Redis stream id."""
    moment = dt.datetime.fromtimestamp(millis / 1000, dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"
