"""What an account's threshold events watch: plain values, checked once, stored as account hash fields.

The charge script reads these fields (``alert_*``, see store/lua/_lib.lua) in the same step as the
charge, so a level set here is in force from the next request on, with no change to the charge's
arguments. A field left out is not watched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from creditgate.core.model import MAX_CREDITS, MAX_INSTANT
from creditgate.errors import InvalidDocument

# The account hash fields, in the order of Alerts' attributes.
FIELDS = {
    "balance_below": "alert_balance_below",
    "depleted": "alert_depleted",
    "allowance_below_percent": "alert_allowance_percent",
    "expiring_within": "alert_expiring_within",
    "first_refusal": "alert_first_refusal",
}
# What the script remembers so that an event about time is raised once (cleared with the alerts).
MEMORY_FIELDS = ("alerted_expiring", "alerted_refusal")


@dataclass(frozen=True)
class Alerts:
    balance_below: int | None = None  # balance.low when a charge takes the balance below this many credits
    depleted: bool = False  # balance.depleted when a charge takes the balance to 0
    allowance_below_percent: int | None = None  # allowance.low when what is left drops below this share
    expiring_within: int | None = None  # subscription.expiring this many seconds before expires_at
    first_refusal: bool = False  # account.refused on the account's first refusal in a period (or UTC day)

    @property
    def any(self) -> bool:
        return self != Alerts()

    def fields(self) -> dict[str, str]:
        """The account hash fields to write; the others are deleted."""
        out: dict[str, str] = {}
        for name, field in FIELDS.items():
            value = getattr(self, name)
            if value is True:
                out[field] = "1"
            elif value is not None and value is not False:
                out[field] = str(value)
        return out

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Alerts:
        unknown = set(document) - set(FIELDS)
        if unknown:
            raise InvalidDocument(f"unknown field(s) {sorted(unknown)}", sorted(unknown)[0])
        return cls(
            balance_below=_bounded(document.get("balance_below"), "balance_below", 1, MAX_CREDITS),
            depleted=_flag(document.get("depleted", False), "depleted"),
            allowance_below_percent=_bounded(
                document.get("allowance_below_percent"), "allowance_below_percent", 1, 100
            ),
            expiring_within=_bounded(document.get("expiring_within"), "expiring_within", 1, MAX_INSTANT),
            first_refusal=_flag(document.get("first_refusal", False), "first_refusal"),
        )

    @classmethod
    def from_fields(cls, raw: Mapping[str, str]) -> Alerts:
        """Read back from the hash; a field that does not parse is unset, as the script reads it."""

        def number(field: str, hi: int) -> int | None:
            text = raw.get(field)
            return int(text) if text is not None and text.isdigit() and 1 <= int(text) <= hi else None

        return cls(
            balance_below=number(FIELDS["balance_below"], MAX_CREDITS),
            depleted=raw.get(FIELDS["depleted"]) == "1",
            allowance_below_percent=number(FIELDS["allowance_below_percent"], 100),
            expiring_within=number(FIELDS["expiring_within"], MAX_INSTANT),
            first_refusal=raw.get(FIELDS["first_refusal"]) == "1",
        )


def _bounded(value: Any, field: str, lo: int, hi: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidDocument(f"must be a whole number from {lo} to {hi}, or null", field)
    return value


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidDocument("must be true or false", field)
    return value
