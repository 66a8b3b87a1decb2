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
from creditgate.core.redis_settings import RedisSettings as RedisSettings  # re-exported
from creditgate.core.redis_settings import parse_redis
from creditgate.core.values import get_bool, get_int, get_str, get_value
from creditgate.errors import ConfigError, InvalidDocument

KEY_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class AccountBy(str, enum.Enum):
    """Which authenticated identity names the account that pays."""

    CONSUMER_ID = "consumer_id"
    CONSUMER_USERNAME = "consumer_username"
    CONSUMER_CUSTOM_ID = "consumer_custom_id"
    CREDENTIAL_ID = "credential_id"


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
    upstream: str | None = None
    key_prefix: str = "credit-gate"
    ledger_retention: int = 10_000
    redis: RedisSettings = field(default_factory=RedisSettings)
    route: str = "global"


def parse_config(raw: Mapping[str, Any]) -> GateConfig:
    """The instance's config from Kong's JSON, or a ConfigError that tells the operator what to fix."""
    if not isinstance(raw, Mapping):
        raise ConfigError("the plugin configuration must be an object")
    plans_raw = get_value(raw, "plans", [])
    if not isinstance(plans_raw, list):
        raise ConfigError(f"plans must be a list of plan names, got {plans_raw!r}")
    try:
        plans = tuple(check_plan_name(name, f"plans[{i}]") for i, name in enumerate(plans_raw))
    except InvalidDocument as error:
        raise ConfigError(str(error)) from None
    if len(set(plans)) != len(plans):
        raise ConfigError(f"plans lists a plan twice: {list(plans)}")

    account_by_raw = get_value(raw, "account_by", AccountBy.CONSUMER_ID.value)
    try:
        account_by = AccountBy(account_by_raw)
    except ValueError:
        raise ConfigError(
            f"account_by must be one of {[a.value for a in AccountBy]}, got {account_by_raw!r}"
        ) from None

    payment_url = get_str(raw, "payment_url", None)
    if payment_url is not None:
        parsed = urlparse(payment_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"payment_url must be an absolute http(s) URL, got {payment_url!r}")

    type_base = get_str(raw, "problem_type_base", "urn:credit-gate:problem:") or ""
    if not urlparse(type_base).scheme:
        raise ConfigError(f"problem_type_base must be an absolute URI, got {type_base!r}")

    key_prefix = get_str(raw, "key_prefix", "credit-gate") or ""
    if not KEY_PREFIX.match(key_prefix):
        raise ConfigError(
            "key_prefix must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', ':', '-' (no braces), "
            f"got {key_prefix!r}"
        )

    # Where the charge is attributed in the ledger and usage, from the ids Kong adds to the config.
    route = get_str(raw, "route_id", None)
    service = get_str(raw, "service_id", None)
    attribution = f"route:{route}" if route else f"service:{service}" if service else "global"

    return GateConfig(
        cost=get_int(raw, "cost", 1, 0, 1_000_000_000),
        plans=plans,
        account_by=account_by,
        payment_url=payment_url,
        problem_type_base=type_base,
        fault_tolerant=get_bool(raw, "fault_tolerant", False),
        hide_client_headers=get_bool(raw, "hide_client_headers", False),
        upstream=get_str(raw, "upstream", None),
        key_prefix=key_prefix,
        ledger_retention=get_int(raw, "ledger_retention", 10_000, 100, 10_000_000),
        redis=parse_redis(raw.get("redis")),
        route=attribution,
    )
