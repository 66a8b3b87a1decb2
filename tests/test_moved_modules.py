"""Module paths of 0.1 keep working for one release: each imports, warns with its new path, and is the
moved module itself, so that a name patched or read through either path is the same name."""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import ModuleType
from unittest import mock

import pytest

import creditgate


def _old(name: str) -> ModuleType:
    sys.modules.pop(name, None)
    with pytest.warns(DeprecationWarning, match=rf"{name} moved to {creditgate.MOVED[name]}"):
        return importlib.import_module(name)


@pytest.mark.parametrize(("old", "new"), sorted(creditgate.MOVED.items()))
def test_an_old_module_path_gives_the_new_modules_names_and_says_where_it_went(old: str, new: str) -> None:
    module, moved = _old(old), importlib.import_module(new)
    if old not in creditgate.SPLIT:
        assert module is moved
    public = [name for name in vars(moved) if not name.startswith("_")]
    assert public and all(getattr(module, name) is getattr(moved, name) for name in public)


# The public names of 0.1 modules that now live in a second home (the rest stayed with the module).
SPLIT_NAMES = {
    "creditgate.admin": ("MAX_USAGE_DAYS", "REFUSED_BY", "UNRECORDED_REASON", "UsageRow", "credits_per_day"),
    "creditgate.handler": ("StoreKey", "STORES", "NOTICES", "CHARGE_CONTEXT_KEY", "Gate"),
    "creditgate.node_report": ("CAUSES", "RedisErrors", "node_key", "nodes_key", "NodeReporter"),
    "creditgate.store.redis_store": (
        "AccountState",
        "LedgerEntry",
        "SettleResult",
        "CreditResult",
        "ImportOutcome",
        "USAGE_TTL_SECONDS",
        "RedisClock",
        "InsufficientBalance",
        "BalanceCapReached",
        "RedisStore",
    ),
}


@pytest.mark.parametrize(("old", "names"), sorted(SPLIT_NAMES.items()))
def test_names_of_a_split_module_are_found_in_their_new_homes(old: str, names: tuple[str, ...]) -> None:
    module = _old(old)
    for name in names:
        assert getattr(module, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        module.no_such_name  # noqa: B018


@pytest.mark.parametrize("new", sorted(set(creditgate.MOVED.values())))
def test_every_new_home_exists(new: str) -> None:
    assert importlib.import_module(new).__name__ == new


@pytest.mark.server
def test_the_imports_the_docs_show_still_work_in_a_fresh_interpreter() -> None:
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "from credit_gate import main, Plugin, Schema\n"  # what Kong and the console script call
        "from creditgate import Admin, Plan, Status, Period, RedisSettings, CreditGateError\n"
        "from creditgate.ops.redis_url import settings_from_url\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "from creditgate.redis_url import settings_from_url as old\n"
        "from creditgate.admin import Admin as OldAdmin\n"
        "assert old is settings_from_url and OldAdmin is Admin\n"
    )
    # A fresh interpreter: the package's finder must work from the first import, not after this suite's.
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_module_is_still_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("creditgate.no_such_module")


@pytest.mark.server  # subprocesses of the package
def test_python_m_of_an_old_path_runs_the_moved_module() -> None:
    def run(*argv: str) -> bytes:
        return subprocess.run([sys.executable, *argv], capture_output=True, check=True).stdout

    moved, new = run("-W", "ignore", "-m", "creditgate.kong_schema"), run("-m", "creditgate.core.kong_schema")
    assert moved == new and moved.startswith(b"{")


def test_a_patch_through_a_split_old_path_reaches_the_code_and_is_undone() -> None:
    from creditgate.kong import node_report

    _old("creditgate.node_report")
    with mock.patch("creditgate.node_report.interval_from_env", return_value=0.0):
        assert node_report.interval_from_env() == 0.0
    assert node_report.interval_from_env() == node_report.DEFAULT_INTERVAL


def test_a_split_old_path_lists_and_star_imports_the_names_of_all_its_homes() -> None:
    old = _old("creditgate.handler")
    assert {"Gate", "NOTICES", "STORES", "StoreKey"} <= set(dir(old))
    names: dict[str, object] = {}
    exec("from creditgate.handler import *", names)
    assert {"Gate", "NOTICES", "STORES", "CHARGE_CONTEXT_KEY"} <= set(names)


def test_importing_an_old_path_leaves_the_new_module_reloadable_as_itself() -> None:
    new = importlib.import_module("creditgate.ops.kong_conf")
    _old("creditgate.deploy")
    assert new.__spec__ is not None and new.__spec__.name == "creditgate.ops.kong_conf"
    assert importlib.reload(new).__name__ == "creditgate.ops.kong_conf"
