"""Every setting's default and bounds are declared once, in the plugin's schema (core/schema.py):
the config parser, the pricing rules, Admin and the CLI read them there. A second copy written
anywhere else fails here, whether it agrees with the schema today or not."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import click
import pytest

from creditgate.cli import cli
from creditgate.core import schema
from creditgate.core.config import GateConfig, parse_config
from creditgate.core.pricing import parse_rules
from creditgate.core.redis_settings import CLUSTER_NODE_FIELDS, REDIS_FIELDS, RedisSettings, parse_redis
from creditgate.errors import ConfigError
from creditgate.ops.admin import Admin

PACKAGE = Path(__file__).resolve().parents[2] / "kong_plugins"
INTEGER_FIELDS = [
    name
    for entry in schema.FIELDS
    for name, field in entry.items()
    if field["type"] == "integer" and "between" in field
]


def test_a_config_built_in_python_has_the_defaults_kong_fills_in() -> None:
    assert GateConfig() == parse_config({})


@pytest.mark.parametrize("name", INTEGER_FIELDS)
def test_the_parser_takes_each_bound_from_the_schema(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    field = schema.declared(name)
    low, high = field["between"]
    assert parse_config({name: high}) is not None
    monkeypatch.setitem(field, "between", [low, high - 1])
    with pytest.raises(ConfigError, match=rf"^{name} must be a whole number from {low} to {high - 1}\b"):
        parse_config({name: high})


@pytest.mark.parametrize("name", INTEGER_FIELDS)
def test_the_parser_takes_each_default_from_the_schema(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    field = schema.declared(name)
    high = field["between"][1]
    monkeypatch.setitem(field, "default", high + 1)  # outside the bounds: refused if it is the one used
    with pytest.raises(ConfigError, match=rf"^{name} must be .*, got {high + 1}$"):
        parse_config({})


REDIS_INTEGER_FIELDS = [
    name for entry in REDIS_FIELDS for name, field in entry.items() if field["type"] == "integer"
]


def test_redis_settings_built_in_python_have_the_defaults_kong_fills_in() -> None:
    assert RedisSettings() == parse_redis({}) == parse_config({}).redis


@pytest.mark.parametrize("name", REDIS_INTEGER_FIELDS)
def test_the_redis_parser_takes_each_default_and_bound_from_the_record(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    field = schema.declared(name, REDIS_FIELDS)
    low, high = field["between"]
    assert getattr(parse_redis({name: high}), name) == high
    monkeypatch.setitem(field, "between", [low, high - 1])
    with pytest.raises(
        ConfigError, match=rf"^redis\.{name} must be a whole number from {low} to {high - 1}\b"
    ):
        parse_redis({name: high})
    monkeypatch.setitem(field, "default", high)  # outside the bounds now: refused if it is the one used
    with pytest.raises(ConfigError, match=rf"^redis\.{name} must be .*, got {high}$"):
        parse_redis({})


def test_a_cluster_node_takes_its_address_and_port_defaults_from_the_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(schema.declared("ip", CLUSTER_NODE_FIELDS), "default", "10.0.0.7")
    monkeypatch.setitem(schema.declared("port", CLUSTER_NODE_FIELDS), "default", 7000)
    (node,) = parse_redis({"cluster_nodes": [{}]}).cluster_nodes
    assert (node.host, node.port) == ("10.0.0.7", 7000)


def test_a_cost_rule_takes_its_bounds_and_methods_from_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    rule = schema.declared("cost", schema.COST_RULE_FIELDS)
    low, high = rule["between"]
    assert parse_rules([{"methods": ["TRACE"], "cost": high}])[0].cost == high
    monkeypatch.setitem(rule, "between", [low, high - 1])
    with pytest.raises(ConfigError, match=rf"from {low} to {high - 1}, got {high}$"):
        parse_rules([{"methods": ["GET"], "cost": high}])
    assert "TRACE" in schema.declared("methods", schema.COST_RULE_FIELDS)["elements"]["one_of"]
    assert "TRACE" in schema.METHODS


def test_the_problem_type_base_without_a_config_is_the_schemas_default() -> None:
    assert schema.PROBLEM_TYPE_BASE == schema.default("problem_type_base") == GateConfig().problem_type_base


def test_the_cli_options_shared_with_the_plugin_take_the_schemas_default_and_bounds() -> None:
    options: dict[str, Any] = {param.name: param for param in cli.params}
    retention = options["ledger_retention"]
    assert retention.default == schema.default("ledger_retention")
    assert isinstance(retention.type, click.IntRange)
    assert (retention.type.min, retention.type.max) == schema.between("ledger_retention")
    assert options["key_prefix"].default == schema.default("key_prefix")


def test_admin_keeps_as_many_ledger_entries_as_the_plugin_by_default() -> None:
    assert Admin.connect.__defaults__ == (schema.default("key_prefix"),)
    # Typed "dict | None" (None without keyword-only parameters): both have some, so a dict.
    connect_defaults = cast(dict[str, Any], Admin.connect.__kwdefaults__)
    init_defaults = cast(dict[str, Any], Admin.__init__.__kwdefaults__)
    assert connect_defaults["ledger_retention"] == schema.default("ledger_retention")
    assert init_defaults["ledger_retention"] == schema.default("ledger_retention")


# Values that only a declaration in the schema has any reason to spell out. The admin API's own
# problems (service/problems.py) are another vocabulary under the same URN: they read it too. The
# plugin's name is also "credit-gate", so the key prefix is caught where a prefix or a default is set.
DECLARED_ONCE = {
    "the problem_type_base default": r"urn:credit-gate:problem:",
    "the HTTP methods of a cost rule": r'"TRACE"',
    "the bounds of a cost": r"\b1_?000_?000_?000\b",
    "the bound of ledger_retention": r"\b10_?000_?000\b",
    "the ledger_retention default": r"[=:]\s*10_?000\b",
    "the key_prefix default": r'(?:prefix\w*\b[^=\n]*=|"default":)\s*"credit-gate"',
}


# The `redis` record's defaults and bounds, declared in core/redis_settings.py: the Redis URL parser
# and the CLI's default URL read them there. (The service's own listen address and port are other
# settings, with defaults of their own.)
REDIS_DECLARED_ONCE = {
    "the Redis port default": r"\b6379\b",
    "the sentinel port default": r"\b26379\b",
    "the bound of a Redis timeout": r"\b60_?000\b",
}


# Each value, and the one module that declares it.
HOMES = {
    **dict.fromkeys(DECLARED_ONCE, "creditgate/core/schema.py"),
    **dict.fromkeys(REDIS_DECLARED_ONCE, "creditgate/core/redis_settings.py"),
}


@pytest.mark.parametrize("what", HOMES)
def test_a_declared_value_is_written_nowhere_but_in_its_declaration(what: str) -> None:
    pattern = re.compile({**DECLARED_ONCE, **REDIS_DECLARED_ONCE}[what])
    home = HOMES[what]
    found = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    others = [p for p in found if p != home]
    assert found and not others, (
        f"{what} is written again in {others}: read it from {home.removeprefix('creditgate/')}"
    )
