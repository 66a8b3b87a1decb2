"""The plugin's configuration, parsed once per instance.

Kong has already checked every field against the plugin's schema (types, defaults, bounds); what
the PDK schema cannot express is checked here, once, when the instance starts. Defaults and bounds
are read from the schema (``creditgate.core.schema``), never written here: only the rules across
fields and the formats Kong's schema cannot state are this module's own. Kong also sends keys
of its own (``route_id``, ``__seq__``, ...) and ``null`` for unset fields: both are accepted, and so is
``{}`` for an empty array (``values.as_list``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlparse

from creditgate.core.decision import Warnings
from creditgate.core.model import check_plan_name
from creditgate.core.periods import DAY_SECONDS
from creditgate.core.pricing import Pricing, RefundPolicy, parse_refund_statuses, parse_rules
from creditgate.core.redis_settings import RedisSettings as RedisSettings  # re-exported
from creditgate.core.redis_settings import parse_redis
from creditgate.core.schema import between, default
from creditgate.core.values import get_bool, get_int, get_list, get_str, get_value
from creditgate.errors import ConfigError, InvalidDocument

KEY_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class AccountBy(str, enum.Enum):
    """Which authenticated identity names the account that pays."""

    CONSUMER_ID = "consumer_id"
    CONSUMER_USERNAME = "consumer_username"
    CONSUMER_CUSTOM_ID = "consumer_custom_id"
    CREDENTIAL_ID = "credential_id"


# The field of Kong's consumer (or credential) entity that names the account.
ACCOUNT_FIELD = {
    AccountBy.CONSUMER_ID: "id",
    AccountBy.CONSUMER_USERNAME: "username",
    AccountBy.CONSUMER_CUSTOM_ID: "custom_id",
    AccountBy.CREDENTIAL_ID: "id",
}


# The namespace of each kind of identity, unless the operator names one (``account_namespace``): a
# consumer whose custom_id is "bob" and one whose username is "bob" are two accounts. Consumer ids
# stay bare: Kong makes every id a UUID (typedefs.uuid), which holds no ':' and so equals no name
# of another namespace; bare ids are also what every deployment had before namespaces.
DEFAULT_NAMESPACE = {
    AccountBy.CONSUMER_ID: "",
    AccountBy.CONSUMER_USERNAME: "username",
    AccountBy.CONSUMER_CUSTOM_ID: "custom_id",
    AccountBy.CREDENTIAL_ID: "credential",
}
NAMESPACE = re.compile(r"^[A-Za-z0-9_.-]{0,64}$")
DEFAULT_ACCOUNT_BY = AccountBy(default("account_by"))


class Role(str, enum.Enum):
    """What a plugin entry does: charge and proxy (the gate), or answer the client's own balance."""

    GATE = "gate"
    BALANCE = "balance"


DEFAULT_ROLE = Role(default("role"))


@dataclass(frozen=True)
class GateConfig:
    """Everything one plugin instance needs, immutable."""

    plans: tuple[str, ...] = ()
    role: Role = DEFAULT_ROLE
    account_by: AccountBy = DEFAULT_ACCOUNT_BY
    account_namespace: str = ""
    payment_url: str | None = None
    problem_type_base: str = default("problem_type_base")
    fault_tolerant: bool = default("fault_tolerant")
    bypass_witness: bool = default("bypass_witness")
    breaker_failures: int = default("breaker_failures")
    breaker_cooldown_ms: int = default("breaker_cooldown_ms")
    hide_client_headers: bool = default("hide_client_headers")
    upstream: str | None = None
    enforce: bool = default("enforce")
    pricing: Pricing = field(default_factory=lambda: Pricing(default("cost")))
    idempotency_window: int = default("idempotency_window")
    refund: RefundPolicy | None = None
    settle_header: str | None = None
    settle_timeout: int = default("settle_timeout")
    pool_tag_prefix: str | None = None
    warnings: Warnings = field(default_factory=Warnings)
    rate_limit_headers: bool = default("rate_limit_headers")
    key_prefix: str = default("key_prefix")
    ledger_retention: int = default("ledger_retention")
    redis: RedisSettings = field(default_factory=RedisSettings)
    route: str = "global"

    @property
    def cost(self) -> int:
        """The flat cost: what a request no cost rule matches costs."""
        return self.pricing.cost

    # Derived once, read by every request (an enum's hash, an attribute read, a call: each costs).

    @cached_property
    def identity_field(self) -> str:
        """The field of Kong's identity entity that names the account (``ACCOUNT_FIELD``)."""
        return ACCOUNT_FIELD[self.account_by]

    @cached_property
    def refund_window(self) -> int:
        """Seconds within which a charge can still be refunded: a day at least, whatever settle_timeout."""
        return max(self.settle_timeout, DAY_SECONDS)

    @cached_property
    def charge_terms(self) -> tuple[tuple[str, ...], str, int, bool, int, int, int]:
        """What every charge through this config asks alike, in ``ChargeRequest``'s order (policy.py):
        the plans, the route, the ledger's retention, shadow mode, the idempotency window, the hold
        (seconds a settlement may take) and the refund window (0 without a log phase)."""
        return (
            self.plans,
            self.route,
            self.ledger_retention,
            not self.enforce,
            self.idempotency_window,
            self.settle_timeout if self.settle_header else 0,
            self.refund_window if self.needs_log_phase else 0,
        )

    @cached_property
    def refusals(self) -> dict[Any, Any]:
        """The refusals answered lately through this config, by the store's result (``policy.decided``
        keeps them): the only state a config holds, and never part of its equality."""
        return {}

    @cached_property  # asked on every allowed request
    def needs_log_phase(self) -> bool:
        """Refunds and settlements happen after the response, in Kong's log phase."""
        return (
            self.role is Role.GATE
            and self.enforce
            and (self.refund is not None or self.settle_header is not None)
        )


def _int(raw: Mapping[str, Any], name: str) -> int:
    low, high = between(name)
    return get_int(raw, name, default(name), low, high)


def _bool(raw: Mapping[str, Any], name: str) -> bool:
    return get_bool(raw, name, default(name))


def parse_config(raw: Mapping[str, Any]) -> GateConfig:
    """The instance's config from Kong's JSON, or a ConfigError that tells the operator what to fix."""
    if not isinstance(raw, Mapping):
        raise ConfigError("the plugin configuration must be an object")
    plans_raw = get_list(raw, "plans", default("plans"), "plan names")
    try:
        plans = tuple(check_plan_name(name, f"plans[{i}]") for i, name in enumerate(plans_raw))
    except InvalidDocument as error:
        raise ConfigError(str(error)) from None
    if len(set(plans)) != len(plans):
        raise ConfigError(f"plans lists a plan twice: {list(plans)}")

    account_by_raw = get_value(raw, "account_by", default("account_by"))
    try:
        account_by = AccountBy(account_by_raw)
    except ValueError:
        raise ConfigError(
            f"account_by must be one of {[a.value for a in AccountBy]}, got {account_by_raw!r}"
        ) from None

    namespace = get_value(raw, "account_namespace", None)
    if namespace is None:
        namespace = DEFAULT_NAMESPACE[account_by]
    if not isinstance(namespace, str) or not NAMESPACE.match(namespace):
        raise ConfigError(
            "account_namespace must be at most 64 characters of A-Z, a-z, 0-9, '_', '.', '-' "
            f"(empty for bare names), got {namespace!r}"
        )

    payment_url = get_str(raw, "payment_url", None)
    if payment_url is not None:
        parsed = urlparse(payment_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"payment_url must be an absolute http(s) URL, got {payment_url!r}")

    type_base = get_str(raw, "problem_type_base", default("problem_type_base")) or ""
    if not urlparse(type_base).scheme:
        raise ConfigError(f"problem_type_base must be an absolute URI, got {type_base!r}")

    key_prefix = get_str(raw, "key_prefix", default("key_prefix")) or ""
    if not KEY_PREFIX.match(key_prefix):
        raise ConfigError(
            "key_prefix must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', ':', '-' (no braces), "
            f"got {key_prefix!r}"
        )

    # Where the charge is attributed in the ledger and usage, from the ids Kong adds to the config.
    route = get_str(raw, "route_id", None)
    service = get_str(raw, "service_id", None)
    attribution = f"route:{route}" if route else f"service:{service}" if service else "global"

    role_raw = get_value(raw, "role", default("role"))
    try:
        role = Role(role_raw)
    except ValueError:
        raise ConfigError(f"role must be one of {[r.value for r in Role]}, got {role_raw!r}") from None

    return GateConfig(
        plans=plans,
        role=role,
        account_by=account_by,
        account_namespace=namespace,
        payment_url=payment_url,
        problem_type_base=type_base,
        fault_tolerant=_bool(raw, "fault_tolerant"),
        bypass_witness=_bool(raw, "bypass_witness"),
        breaker_failures=_int(raw, "breaker_failures"),
        breaker_cooldown_ms=_int(raw, "breaker_cooldown_ms"),
        hide_client_headers=_bool(raw, "hide_client_headers"),
        upstream=get_str(raw, "upstream", None),
        enforce=_bool(raw, "enforce"),
        pricing=Pricing(
            _int(raw, "cost"), parse_rules(get_list(raw, "costs", default("costs"), "cost rules"))
        ),
        idempotency_window=_int(raw, "idempotency_window"),
        refund=parse_refund_statuses(get_list(raw, "refund_statuses", default("refund_statuses"), "statuses"))
        if _bool(raw, "refund_on_failure")
        else None,
        settle_header=get_str(raw, "settle_header", None),
        settle_timeout=_int(raw, "settle_timeout"),
        pool_tag_prefix=get_str(raw, "pool_tag_prefix", None),
        warnings=Warnings(
            balance_below=_int(raw, "warn_balance_below"),
            allowance_below=_int(raw, "warn_allowance_below"),
            expiry_days=_int(raw, "warn_expiry_days"),
        ),
        rate_limit_headers=_bool(raw, "rate_limit_headers"),
        key_prefix=key_prefix,
        ledger_retention=_int(raw, "ledger_retention"),
        redis=parse_redis(raw.get("redis")),
        route=attribution,
    )
