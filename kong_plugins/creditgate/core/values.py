"""Reading typed values out of Kong's config JSON, where an unset field arrives as null."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from creditgate.errors import ConfigError


def get_value(raw: Mapping[str, Any], name: str, default: Any) -> Any:
    value = raw.get(name)
    return default if value is None else value


def get_int(raw: Mapping[str, Any], name: str, default: int, low: int, high: int, where: str = "") -> int:
    value = get_value(raw, name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}{name} must be a whole number from {low} to {high}, got {value!r}")
    return value


def get_bool(raw: Mapping[str, Any], name: str, default: bool, where: str = "") -> bool:
    value = get_value(raw, name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}{name} must be true or false, got {value!r}")
    return value


def get_str(raw: Mapping[str, Any], name: str, default: str | None, where: str = "") -> str | None:
    value = get_value(raw, name, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}{name} must be a string, got {value!r}")
    return value or default


def as_list(value: Any) -> Any:
    """An empty object where a list is expected is the empty list.

    Kong's encoders cannot tell an empty Lua table from an empty record: lua-cjson (with its default
    ``encode_empty_table_as_object``) and MessagePack encoders without a hint write ``{}`` for an
    array field set to ``[]``. Anything else is returned as it is, for the caller to check.
    """
    if isinstance(value, Mapping) and not value:
        return []
    return value


def get_list(raw: Mapping[str, Any], name: str, default: Any, what: str, where: str = "") -> list[Any]:
    """A list field (``{}`` read as the empty list, see ``as_list``); ``what`` says what its elements are."""
    value = as_list(get_value(raw, name, default))
    if not isinstance(value, list):
        raise ConfigError(f"{where}{name} must be a list of {what}, got {value!r}")
    return value
