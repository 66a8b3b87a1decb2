"""Module paths of 0.1 that moved when the package took its folders (core/ store/ kong/ ops/).

Importing an old path still works for one release, and warns with the new path (remove in 0.3). A
module that moved whole is given as itself, the same object under both names: its names, a patch of
them, ``import *``, ``python -m`` and ``importlib.reload`` behave as through the new path. A module
whose public names went to several homes (``SPLIT``) is a module of its own that reads each name from
the first home that has it, and writes (a patch) to that home, so the code that uses the name sees it.
Type checkers do not follow this finder: import the new paths in typed code.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import CodeType, ModuleType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from importlib.abc import Loader

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
# The other homes of an old module's public names, after the one in MOVED.
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
_UNSET = object()


class SplitModule(ModuleType):
    """An old module whose names now live in several homes: each name is read from, and written to,
    the first home that has it. Writing saves the home's value and deleting puts it back, which is what
    ``unittest.mock.patch`` does through a module that does not hold the name itself."""

    def __init__(self, name: str, homes: Sequence[ModuleType]) -> None:
        super().__init__(name, homes[0].__doc__)
        object.__setattr__(self, "_homes", tuple(homes))
        object.__setattr__(self, "_saved", {})
        public = dict.fromkeys(n for home in homes for n in vars(home) if not n.startswith("_"))
        object.__setattr__(self, "__all__", list(public))

    def _home(self, name: str) -> ModuleType | None:
        homes: tuple[ModuleType, ...] = object.__getattribute__(self, "_homes")
        return next((home for home in homes if name in vars(home)), None)

    def __getattr__(self, name: str) -> Any:
        home = self._home(name)
        if home is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        return getattr(home, name)

    def __setattr__(self, name: str, value: Any) -> None:
        home = None if name.startswith("__") else self._home(name)
        if home is None:
            super().__setattr__(name, value)
            return
        saved: dict[str, Any] = object.__getattribute__(self, "_saved")
        saved.setdefault(name, getattr(home, name))
        setattr(home, name, value)

    def __delattr__(self, name: str) -> None:
        saved: dict[str, Any] = object.__getattribute__(self, "_saved")
        home, original = self._home(name), saved.pop(name, _UNSET)
        if home is None or original is _UNSET:
            super().__delattr__(name)
        else:
            setattr(home, name, original)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self.__all__})


class MovedModules:
    """Finds an old module path of ``MOVED`` and loads it as the module it moved to.

    A finder and a loader by their methods (``sys.meta_path`` and runpy ask for nothing else), not by
    ``importlib.abc``'s classes: importing ``importlib.abc`` imports ``importlib.resources`` and with it
    ``inspect``, ``tempfile`` and ``pathlib``, more than a third of what the plugin server's acceptor
    imports before it listens, since every import of the package loads this module.
    """

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, cast("Loader", self), is_package=False)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        message = f"{spec.name} moved to {new}; the old path goes in credit-gate 0.3"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        if spec.name in SPLIT:
            return SplitModule(spec.name, [module, *map(importlib.import_module, SPLIT[spec.name])])
        self._specs[module.__name__] = module.__spec__  # the import system sets the old one on it next
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The module it moved to is already executed: give it back its own spec, so that it reloads
        as itself."""
        if module.__name__ in self._specs:
            module.__spec__ = self._specs.pop(module.__name__)

    # ``python -m <old path>`` (runpy) runs the new module's code.

    def get_code(self, fullname: str) -> CodeType | None:
        import importlib.abc

        warnings.warn(f"{fullname} moved to {MOVED[fullname]}", DeprecationWarning, stacklevel=2)
        spec = importlib.util.find_spec(MOVED[fullname])
        loader = spec.loader if spec is not None else None
        if not isinstance(loader, importlib.abc.InspectLoader):
            raise ImportError(f"{MOVED[fullname]} has no code to run")
        return loader.get_code(MOVED[fullname])

    def get_source(self, fullname: str) -> str | None:
        return None

    def is_package(self, fullname: str) -> bool:
        return False


if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(MovedModules())
