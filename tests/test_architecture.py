"""The package's architecture, held by its imports: a pure core, one door to Redis, layers that never
import upwards, no circles, and modules small enough to read.

The layers, lowest first (a module may import its own layer and the ones below it):

    core/ and errors.py   plain values and rules: neither Kong nor Redis
    store/                the only code that speaks Redis
    kong/  ops/           the Kong adapter; the operators' tools (neither imports the other)
    cli/  service/        the operators' front ends
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kong_plugins" / "creditgate"
LAYERS = {"errors": 0, "core": 0, "store": 1, "kong": 2, "ops": 2, "cli": 3, "service": 3}
DRIVERS = ("redis", "hiredis")  # only store/ imports them
KONG_SIDE = ("kong_pdk", "gevent")  # the core imports neither
MAX_LINES = 600
MAX_GATE_LINES = 250  # the gate reads in one sitting: its helpers live in kong/'s other modules
MAX_LOOSE_MODULES = 3  # at the package root, beside the folders: __init__.py, errors.py and one more


@dataclass(frozen=True)
class Module:
    name: str  # creditgate.store.keys
    path: Path
    tree: ast.Module

    @property
    def folder(self) -> str:
        """The first part below the package: ``store`` for creditgate.store.keys, ``errors`` for errors.py."""
        parts = self.name.split(".")
        return parts[1] if len(parts) > 1 else ""


def _modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("creditgate", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        found[name] = Module(name, path, ast.parse(path.read_text(encoding="utf-8")))
    return found


MODULES = _modules()


def _imported(module: Module) -> Iterator[tuple[str, int]]:
    """Every module this one imports (type-checking imports too: a circle for mypy is still a circle)."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield (full if full in MODULES else node.module), node.lineno


def _package_imports(module: Module) -> set[str]:
    return {name for name, _ in _imported(module) if name in MODULES and name != module.name}


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = []
    for module in MODULES.values():
        if module.folder not in LAYERS:
            continue  # the package's own __init__: names resolved lazily, for the public surface
        for name in _package_imports(module):
            target = MODULES[name]
            if target.folder in LAYERS and LAYERS[target.folder] > LAYERS[module.folder]:
                upward.append(f"{module.name} imports {name}")
            if {module.folder, target.folder} == {"kong", "ops"}:
                upward.append(f"{module.name} imports {name} (kong/ and ops/ are independent)")
    assert upward == []


def test_the_package_has_no_import_circle() -> None:
    graph = {name: _package_imports(module) for name, module in MODULES.items()}
    circles: list[list[str]] = []
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            circles.append([*path[path.index(name) :], name])
            return
        if name in done:
            return
        for following in sorted(graph[name]):
            visit(following, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert circles == []


def test_the_core_imports_neither_kong_nor_redis() -> None:
    found = [
        f"{module.name}:{line} imports {name}"
        for module in MODULES.values()
        if module.folder == "core" or module.name == "creditgate.errors"
        for name, line in _imported(module)
        if name.split(".")[0] in (*DRIVERS, *KONG_SIDE)
    ]
    assert found == []


def test_only_the_store_imports_a_redis_driver() -> None:
    found = [
        f"{module.name}:{line} imports {name}"
        for module in MODULES.values()
        if module.folder != "store"
        for name, line in _imported(module)
        if name.split(".")[0] in DRIVERS
    ]
    assert found == []


def _store_privates() -> set[str]:
    """The private members of RedisStore: what only store/ may touch."""
    names = set()
    for node in ast.walk(MODULES["creditgate.store.store"].tree):
        if isinstance(node, ast.ClassDef) and node.name == "RedisStore":
            for item in ast.walk(node):
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("_"):
                    names.add(item.name)
                elif isinstance(item, ast.Attribute) and item.attr.startswith("_"):
                    names.add(item.attr)
    return {name for name in names if not name.startswith("__")}


def test_outside_the_store_nothing_calls_a_store_private_or_its_raw_client() -> None:
    privates = _store_privates()
    assert {"_run", "_pipeline"} <= privates  # what this test guards, so that it cannot pass vacuously
    found = []
    for module in MODULES.values():
        if module.folder == "store":
            continue
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.Attribute):
                continue
            owner = ast.unparse(node.value)
            private = node.attr in privates and owner not in ("self", "cls")
            raw_client = node.attr == "client" and owner.split(".")[-1].endswith("store")
            if private or raw_client:
                found.append(f"{module.name}:{node.lineno} {owner}.{node.attr}")
    assert found == []


def _lines(module: Module) -> int:
    return len(module.path.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_600_lines(name: str) -> None:
    assert _lines(MODULES[name]) <= MAX_LINES


def test_the_gate_reads_in_one_sitting() -> None:
    assert _lines(MODULES["creditgate.kong.gate"]) <= MAX_GATE_LINES


def test_the_package_root_holds_folders_and_at_most_three_modules() -> None:
    loose = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert "errors.py" in loose
    assert len(loose) <= MAX_LOOSE_MODULES, loose
