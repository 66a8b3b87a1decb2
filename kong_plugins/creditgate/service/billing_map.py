"""The operator's billing map (``--billing-map FILE``) and the Stripe secrets: how Stripe's objects map
to accounts, credits and plans. Read once at start; a bad file is a ConfigError naming the field."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from creditgate.core.model import MAX_CREDITS, check_plan_name
from creditgate.core.payments import Rate
from creditgate.errors import ConfigError, InvalidDocument
from creditgate.ops.documents import read_document
from creditgate.service.state import Service

STRIPE_SECRET_ENV = "CREDIT_GATE_STRIPE_WEBHOOK_SECRET"
GENERIC_SECRET_ENV = "CREDIT_GATE_WEBHOOK_SECRET"
DEFAULT_TOLERANCE = 300
DEFAULT_METADATA_KEY = "credit_gate_account"
DEFAULT_PAST_DUE_GRACE = 3 * 86_400  # Stripe retries a failed payment over days


def _rate(path: Path | None, where: str, value: Any, currency: str | None = None) -> Rate:
    """``{credits: N, amount: M, currency: c}``: N credits for every M of the currency's smallest unit."""
    form = "{credits: 5000, amount: 1450, currency: usd} (credits per amount paid, in cents)"
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where} must be a mapping like {form}, got {value!r}")
    unknown = set(value) - {"credits", "amount", "currency"}
    if unknown:
        raise ConfigError(f"{path}: {where} has unknown field(s) {sorted(unknown)}; write it as {form}")
    count, amount = value.get("credits"), value.get("amount")
    for name, number in (("credits", count), ("amount", amount)):
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_CREDITS:
            raise ConfigError(f"{path}: {where}.{name} must be a whole number from 1 to {MAX_CREDITS}")
    code = currency if currency is not None else value.get("currency")
    if not isinstance(code, str) or not re.fullmatch(r"[a-z]{3}", code.lower()):
        raise ConfigError(f"{path}: {where}.currency must be an ISO currency code such as usd")
    assert isinstance(count, int) and isinstance(amount, int)  # checked above
    return Rate(credits=count, amount=amount, currency=code.lower())


def _seconds(path: Path | None, name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{path}: {name} must be {low}-{high} seconds, got {value!r}")
    return value


@dataclass(frozen=True)
class WebhookSettings:
    """Secrets from the environment; the mapping from the operator's file (``--billing-map``)."""

    stripe_secret: str = ""
    generic_secret: str = ""
    tolerance: int = DEFAULT_TOLERANCE
    credits: dict[str, Rate] = field(default_factory=dict)  # Stripe price or product id -> credits per amount
    currencies: dict[str, Rate] = field(default_factory=dict)  # currency -> credits per amount (fallback)
    plans: dict[str, str] = field(default_factory=dict)  # Stripe price id -> plan name
    customers: dict[str, str] = field(default_factory=dict)  # Stripe customer id -> account
    metadata_key: str = DEFAULT_METADATA_KEY
    refunds: bool = True  # refunds and disputes take the credits back (off: logged only)
    create_accounts: bool = False  # a paid event may open the account it names (off: it must exist)
    connect_accounts: frozenset[str] = frozenset()  # Stripe Connect accounts whose events apply
    past_due_grace: int = DEFAULT_PAST_DUE_GRACE  # seconds a past_due subscription keeps its access

    @classmethod
    def load(cls, path: Path | None, environ: dict[str, str] | None = None) -> WebhookSettings:
        env = os.environ if environ is None else environ
        document: Any = read_document(path) if path is not None else {}
        if not isinstance(document, dict):
            raise ConfigError(f"{path}: must be a mapping with credits, customers, metadata_key, refunds")
        unknown = set(document) - {
            "credits",
            "currencies",
            "plans",
            "customers",
            "metadata_key",
            "refunds",
            "tolerance",
            "create_accounts",
            "connect_accounts",
            "past_due_grace",
        }
        if unknown:
            raise ConfigError(f"{path}: unknown field(s) {sorted(unknown)}")
        credits = document.get("credits") or {}
        currencies = document.get("currencies") or {}
        plans = document.get("plans") or {}
        for name, mapping in (("credits", credits), ("currencies", currencies), ("plans", plans)):
            if not isinstance(mapping, dict):
                raise ConfigError(f"{path}: {name} must be a mapping")
        for name, value in plans.items():
            try:
                check_plan_name(value, f"plans.{name}")
            except InvalidDocument as error:
                raise ConfigError(f"{path}: {error}") from None
        customers = document.get("customers") or {}
        if not isinstance(customers, dict) or not all(isinstance(v, str) and v for v in customers.values()):
            raise ConfigError(f"{path}: customers must map Stripe customer ids to account names")
        tolerance = _seconds(path, "tolerance", document.get("tolerance", DEFAULT_TOLERANCE), 1, 86_400)
        grace = _seconds(
            path, "past_due_grace", document.get("past_due_grace", DEFAULT_PAST_DUE_GRACE), 0, 90 * 86_400
        )
        create_accounts = document.get("create_accounts", False)
        if not isinstance(create_accounts, bool):
            raise ConfigError(f"{path}: create_accounts must be true or false, got {create_accounts!r}")
        connect_accounts = document.get("connect_accounts") or []
        if not isinstance(connect_accounts, list) or not all(
            isinstance(a, str) and a.startswith("acct_") for a in connect_accounts
        ):
            raise ConfigError(f"{path}: connect_accounts must be a list of Stripe account ids (acct_...)")
        return cls(
            stripe_secret=env.get(STRIPE_SECRET_ENV, ""),
            generic_secret=env.get(GENERIC_SECRET_ENV, ""),
            tolerance=tolerance,
            credits={str(k): _rate(path, f"credits.{k}", v) for k, v in credits.items()},
            currencies={
                str(k).lower(): _rate(path, f"currencies.{k}", v, str(k)) for k, v in currencies.items()
            },
            plans={str(k): str(v) for k, v in plans.items()},
            customers={str(k): v for k, v in customers.items()},
            metadata_key=str(document.get("metadata_key", DEFAULT_METADATA_KEY)),
            refunds=bool(document.get("refunds", True)),
            create_accounts=create_accounts,
            connect_accounts=frozenset(connect_accounts),
            past_due_grace=grace,
        )


def settings_of(service: Service) -> WebhookSettings:
    settings = service.extra.get("webhooks")
    return settings if isinstance(settings, WebhookSettings) else WebhookSettings()


def connected_elsewhere(settings: WebhookSettings, event: dict[str, Any]) -> bool:
    """An event of a Stripe Connect account (``event.account``) the billing map does not list: it is about
    that account's customers and money, not the platform's, and applies only when the map lists it."""
    connected = event.get("account")
    return connected is not None and not (
        isinstance(connected, str) and connected in settings.connect_accounts
    )


def field_at(obj: Any, *path: str) -> Any:
    """The value at ``path`` in nested JSON objects, or None where any step is missing or not an object."""
    for name in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(name)
    return obj


def account_of(settings: WebhookSettings, obj: dict[str, Any]) -> str | None:
    """The account a Stripe object is for: its metadata (or its subscription's), else its customer mapped."""
    for metadata in (
        field_at(obj, "metadata"),
        field_at(obj, "subscription_details", "metadata"),
        field_at(obj, "parent", "subscription_details", "metadata"),
    ):
        if isinstance(metadata, dict) and isinstance(metadata.get(settings.metadata_key), str):
            return str(metadata[settings.metadata_key])
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return settings.customers.get(customer) if isinstance(customer, str) else None


__all__ = [
    "DEFAULT_METADATA_KEY",
    "DEFAULT_PAST_DUE_GRACE",
    "GENERIC_SECRET_ENV",
    "STRIPE_SECRET_ENV",
    "WebhookSettings",
    "account_of",
    "connected_elsewhere",
    "field_at",
    "settings_of",
]
