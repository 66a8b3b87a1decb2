"""The plugin's configuration, parsed once per instance.

Kong has already checked every field against the plugin's ``Schema`` (types, defaults, bounds); what
the PDK schema cannot express is checked here, once, when the instance starts. Kong also sends keys
of its own (``route_id``, ``__seq__``, ...) and ``null`` for unset fields: both are accepted.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from creditgate.core.model import check_plan_name
from creditgate.errors import ConfigError, InvalidDocument

KEY_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class AccountBy(str, enum.Enum):
    """Which authenticated identity names the account that pays."""

    CONSUMER_ID = "consumer_id"
    CONSUMER_USERNAME = "consumer_username"
    CONSUMER_CUSTOM_ID = "consumer_custom_id"
    CREDENTIAL_ID = "credential_id"


@dataclass(frozen=True)
class RedisSettings:
    """Where the balances live. Timeouts are milliseconds, as in Kong's own Redis settings."""

    host: str = "127.0.0.1"
    port: int = 6379
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    database: int = 0
    connect_timeout: int = 200
    read_timeout: int = 200
    ssl: bool = False
    ssl_verify: bool = True
    server_name: str | None = None
    ca_file: str | None = None


@dataclass(frozen=True)
class GateConfig:
    """Everything one plugin instance needs, immutable."""

    cost: int = 1
    plans: tuple[str, ...] = ()
    account_by: AccountBy = AccountBy.CONSUMER_ID
    payment_url: str | None = None
    problem_type_base: str = "urn:credit-gate:problem:"
    fault_tolerant: bool = False
    hide_client_headers: bool = False
    key_prefix: str = "credit-gate"
    ledger_retention: int = 10_000
    redis: RedisSettings = RedisSettings()
    route: str = "global"


def _get(raw: Mapping[str, Any], name: str, default: Any) -> Any:
    value = raw.get(name)
    return default if value is None else value


def _int(raw: Mapping[str, Any], name: str, default: int, low: int, high: int, where: str = "") -> int:
    value = _get(raw, name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}{name} must be a whole number from {low} to {high}, got {value!r}")
    return value


def _bool(raw: Mapping[str, Any], name: str, default: bool, where: str = "") -> bool:
    value = _get(raw, name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}{name} must be true or false, got {value!r}")
    return value


def _str(raw: Mapping[str, Any], name: str, default: str | None, where: str = "") -> str | None:
    value = _get(raw, name, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}{name} must be a string, got {value!r}")
    return value or default


def parse_redis(raw: Mapping[str, Any] | None) -> RedisSettings:
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ConfigError("redis must be a record of settings")
    where = "redis."
    settings = RedisSettings(
        host=_str(raw, "host", "127.0.0.1", where) or "127.0.0.1",
        port=_int(raw, "port", 6379, 1, 65535, where),
        username=_str(raw, "username", None, where),
        password=_str(raw, "password", None, where),
        database=_int(raw, "database", 0, 0, 15, where),
        connect_timeout=_int(raw, "connect_timeout", 200, 1, 60_000, where),
        read_timeout=_int(raw, "read_timeout", 200, 1, 60_000, where),
        ssl=_bool(raw, "ssl", False, where),
        ssl_verify=_bool(raw, "ssl_verify", True, where),
        server_name=_str(raw, "server_name", None, where),
        ca_file=_str(raw, "ca_file", None, where),
    )
    return settings


def parse_config(raw: Mapping[str, Any]) -> GateConfig:
    """The instance's config from Kong's JSON, or a ConfigError that tells the operator what to fix."""
    if not isinstance(raw, Mapping):
        raise ConfigError("the plugin configuration must be an object")
    plans_raw = _get(raw, "plans", [])
    if not isinstance(plans_raw, list):
        raise ConfigError(f"plans must be a list of plan names, got {plans_raw!r}")
    try:
        plans = tuple(check_plan_name(name, f"plans[{i}]") for i, name in enumerate(plans_raw))
    except InvalidDocument as error:
        raise ConfigError(str(error)) from None
    if len(set(plans)) != len(plans):
        raise ConfigError(f"plans lists a plan twice: {list(plans)}")

    account_by_raw = _get(raw, "account_by", AccountBy.CONSUMER_ID.value)
    try:
        account_by = AccountBy(account_by_raw)
    except ValueError:
        raise ConfigError(
            f"account_by must be one of {[a.value for a in AccountBy]}, got {account_by_raw!r}"
        ) from None

    payment_url = _str(raw, "payment_url", None)
    if payment_url is not None:
        parsed = urlparse(payment_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"payment_url must be an absolute http(s) URL, got {payment_url!r}")

    type_base = _str(raw, "problem_type_base", "urn:credit-gate:problem:") or ""
    if not urlparse(type_base).scheme:
        raise ConfigError(f"problem_type_base must be an absolute URI, got {type_base!r}")

    key_prefix = _str(raw, "key_prefix", "credit-gate") or ""
    if not KEY_PREFIX.match(key_prefix):
        raise ConfigError(
            "key_prefix must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', ':', '-' (no braces), "
            f"got {key_prefix!r}"
        )

    # Where the charge is attributed in the ledger and usage, from the ids Kong adds to the config.
    route = _str(raw, "route_id", None)
    service = _str(raw, "service_id", None)
    attribution = f"route:{route}" if route else f"service:{service}" if service else "global"

    return GateConfig(
        cost=_int(raw, "cost", 1, 0, 1_000_000_000),
        plans=plans,
        account_by=account_by,
        payment_url=payment_url,
        problem_type_base=type_base,
        fault_tolerant=_bool(raw, "fault_tolerant", False),
        hide_client_headers=_bool(raw, "hide_client_headers", False),
        key_prefix=key_prefix,
        ledger_retention=_int(raw, "ledger_retention", 10_000, 100, 10_000_000),
        redis=parse_redis(raw.get("redis")),
        route=attribution,
    )
