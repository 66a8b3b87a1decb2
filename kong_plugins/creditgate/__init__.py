"""credit-gate: plans, subscriptions and prepaid credit for Kong, enforced at the edge.

The public surface for operators and billing integrations is ``Admin`` (``creditgate.ops.admin``), the
values it takes (``Plan``, ``Status``, ``Period``) and the exceptions in ``creditgate.errors``.

Names are resolved on first use, so that importing a light module of the package (the plugin
server's entry point does) loads neither redis-py nor ssl before gevent may patch them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
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


# Module paths of 0.1 that moved when the package took its folders (core/ store/ kong/ ops/). Importing
# an old path still works for one more release: it warns and gives the new module itself (the same object,
# so its names and any patch of them are shared). Remove in 0.3.
MOVED = {
    "creditgate.admin": "creditgate.ops.admin",
    "creditgate.balance_route": "creditgate.kong.balance",
    "creditgate.deploy": "creditgate.ops.kong_conf",
    "creditgate.documents": "creditgate.ops.documents",
    "creditgate.export": "creditgate.ops.export",
    "creditgate.handler": "creditgate.kong.gate",
    "creditgate.importer": "creditgate.ops.importer",
    "creditgate.kong_schema": "creditgate.core.kong_schema",
    "creditgate.multiprocess": "creditgate.kong.processes",
    "creditgate.node_report": "creditgate.kong.node_report",
    "creditgate.pdk_runtime": "creditgate.kong.runtime",
    "creditgate.problem_schema": "creditgate.core.problem_schema",
    "creditgate.redis_url": "creditgate.ops.redis_url",
    "creditgate.store.redis_store": "creditgate.store.store",
}
# Where an old module's public names were split between homes, the old path is a module of its own that
# finds each name in the first home that has it.
SPLIT = {
    "creditgate.admin": ("creditgate.ops.usage",),
    "creditgate.handler": ("creditgate.kong.stores", "creditgate.kong.notices", "creditgate.kong.answer"),
    "creditgate.node_report": ("creditgate.store.nodes", "creditgate.store.keys"),
    "creditgate.store.redis_store": (
        "creditgate.store.replies",
        "creditgate.store.clock",
        "creditgate.errors",
    ),
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path of ``MOVED`` and loads it as the module it moved to."""

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        message = f"{spec.name} moved to {new}; the old path goes in credit-gate 0.3"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        if spec.name not in SPLIT:
            return module
        homes = [module, *(importlib.import_module(home) for home in SPLIT[spec.name])]

        def find(name: str) -> Any:
            for home in homes:
                if hasattr(home, name):
                    return getattr(home, name)
            raise AttributeError(f"module {spec.name!r} has no attribute {name!r}")

        split = ModuleType(spec.name, module.__doc__)
        split.__getattr__ = find  # type: ignore[method-assign]
        return split

    def exec_module(self, module: ModuleType) -> None:
        """The module it moved to is already executed."""


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
