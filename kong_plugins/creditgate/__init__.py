"""credit-gate: plans, subscriptions and prepaid credit for Kong, enforced at the edge.

The public surface for operators and billing integrations is ``Admin`` (``creditgate.admin``), the
values it takes (``Plan``, ``Status``, ``Period``) and the exceptions in ``creditgate.errors``.
"""

from creditgate.admin import Admin
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan, Status, Subscription
from creditgate.core.periods import Period
from creditgate.errors import (
    ConfigError,
    Conflict,
    CreditGateError,
    InvalidDocument,
    NotFound,
    StoreError,
    StoreTimeout,
)

__all__ = [
    "Admin",
    "ConfigError",
    "Conflict",
    "CreditGateError",
    "InvalidDocument",
    "NotFound",
    "Period",
    "Plan",
    "RedisSettings",
    "Status",
    "StoreError",
    "StoreTimeout",
    "Subscription",
]
