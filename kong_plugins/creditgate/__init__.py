"""credit-gate: plans, subscriptions and prepaid credit for Kong, enforced at the edge.

The public surface for operators and billing integrations is ``Admin`` (``creditgate.ops.admin``), the
values it takes (``Plan``, ``Status``, ``Period``) and the exceptions in ``creditgate.errors``.

Names are resolved on first use, so that importing a light module of the package (the plugin
server's entry point does) loads neither redis-py nor ssl before gevent may patch them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from creditgate.core.model import Plan, Status, Subscription
    from creditgate.core.periods import Period
    from creditgate.core.redis_settings import RedisSettings
    from creditgate.errors import (
        ConfigError,
        Conflict,
        CreditGateError,
        InvalidDocument,
        NotFound,
        StoreError,
        StoreTimeout,
    )
    from creditgate.ops.admin import Admin

_HOMES = {
    "Admin": "creditgate.ops.admin",
    "Plan": "creditgate.core.model",
    "Status": "creditgate.core.model",
    "Subscription": "creditgate.core.model",
    "Period": "creditgate.core.periods",
    "RedisSettings": "creditgate.core.redis_settings",
    "ConfigError": "creditgate.errors",
    "Conflict": "creditgate.errors",
    "CreditGateError": "creditgate.errors",
    "InvalidDocument": "creditgate.errors",
    "NotFound": "creditgate.errors",
    "StoreError": "creditgate.errors",
    "StoreTimeout": "creditgate.errors",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'creditgate' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


# Old module paths of 0.1 (creditgate.admin, ...) keep importing for one release: see _moved.py.
from creditgate._moved import MOVED as MOVED  # noqa: E402
from creditgate._moved import SPLIT as SPLIT  # noqa: E402
