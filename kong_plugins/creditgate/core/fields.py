"""Looking up a field in a record of a Kong schema (a list of one-entry ``{name: declaration}`` maps).

``core/schema.py`` (the plugin's config) and ``core/redis_settings.py`` (its ``redis`` record) read
their defaults and bounds with these, so that each is written once, in the declaration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Field = dict[str, Any]
Fields = Sequence[Mapping[str, Field]]


def declared(name: str, fields: Fields) -> Field:
    """The declaration of the field ``name`` of a record."""
    for entry in fields:
        if name in entry:
            return entry[name]
    raise KeyError(f"no field {name!r} in the schema")


def default(name: str, fields: Fields) -> Any:
    """A field's default, as Kong fills it in."""
    return declared(name, fields)["default"]


def between(name: str, fields: Fields) -> tuple[int, int]:
    """A number field's inclusive bounds."""
    low, high = declared(name, fields)["between"]
    return low, high
