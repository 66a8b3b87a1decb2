"""What a request costs, and which responses give the charge back.

Cost rules are tried in order; the first whose method and path match sets the cost, and a request no
rule matches costs the plugin's flat ``cost``. A path pattern matches the whole normalized path:
``*`` stands for one path segment or part of one (no ``/``), ``**`` for anything (``/`` included),
every other character for itself. ``/v1/models/*`` matches ``/v1/models/gpt`` but not
``/v1/models/gpt/versions``; ``/v1/files/**`` matches both ``/v1/files/a`` and ``/v1/files/a/b``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from creditgate.core.schema import COST_RULE_FIELDS, METHODS, between
from creditgate.errors import ConfigError

STATUS_PATTERN = re.compile(r"^[1-5]([0-9]{2}|xx)$")
SETTLED_COST = re.compile(r"^[0-9]{1,16}$")


def compile_path(pattern: str) -> re.Pattern[str]:
    if not pattern.startswith("/"):
        raise ConfigError(f"a cost rule's path must start with '/', got {pattern!r}")
    parts = re.split(r"(\*\*|\*)", pattern)
    regex = "".join({"**": ".*", "*": "[^/]*"}.get(part, re.escape(part)) for part in parts)
    return re.compile(f"^{regex}$")


@dataclass(frozen=True)
class CostRule:
    methods: frozenset[str]
    path: re.Pattern[str] | None
    cost: int

    def matches(self, method: str, path: str) -> bool:
        if self.methods and method.upper() not in self.methods:
            return False
        return self.path is None or self.path.match(path) is not None


@dataclass(frozen=True)
class Pricing:
    """The flat cost and the rules that override it."""

    cost: int
    rules: tuple[CostRule, ...] = ()

    # Asked on every request: worked out once per instance.
    @cached_property
    def needs_method(self) -> bool:
        return any(rule.methods for rule in self.rules)

    @cached_property
    def needs_path(self) -> bool:
        return any(rule.path is not None for rule in self.rules)

    def cost_of(self, method: str, path: str) -> int:
        for rule in self.rules:
            if rule.matches(method, path):
                return rule.cost
        return self.cost


def parse_rules(raw: Sequence[Mapping[str, Any]] | None) -> tuple[CostRule, ...]:
    rules = []
    low, high = between("cost", COST_RULE_FIELDS)
    for index, entry in enumerate(raw or ()):
        where = f"costs[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a record with methods, path and cost")
        cost = entry.get("cost")
        if isinstance(cost, bool) or not isinstance(cost, int) or not low <= cost <= high:
            raise ConfigError(f"{where}.cost must be a whole number from {low} to {high}, got {cost!r}")
        methods = frozenset(str(m).upper() for m in entry.get("methods") or ())
        unknown = methods - METHODS
        if unknown:
            raise ConfigError(f"{where}.methods has unknown HTTP method(s) {sorted(unknown)}")
        path = entry.get("path")
        if not methods and not path:
            raise ConfigError(f"{where} must name methods, a path, or both (a rule for everything is `cost`)")
        rules.append(CostRule(methods, compile_path(path) if path else None, cost))
    return tuple(rules)


@dataclass(frozen=True)
class RefundPolicy:
    """Which response statuses give a charge back: exact codes ("503") or classes ("5xx")."""

    exact: frozenset[int] = frozenset()
    classes: frozenset[int] = frozenset()

    def refunds(self, status: int | None) -> bool:
        if status is None:
            return False
        return status in self.exact or status // 100 in self.classes


def parse_refund_statuses(raw: Sequence[Any] | None) -> RefundPolicy:
    exact: set[int] = set()
    classes: set[int] = set()
    for index, value in enumerate(raw or ()):
        text = str(value).lower()
        if not STATUS_PATTERN.match(text):
            raise ConfigError(
                f'refund_statuses[{index}] must be a status like "503" or a class like "5xx", got {value!r}'
            )
        if text.endswith("xx"):
            classes.add(int(text[0]))
        else:
            exact.add(int(text))
    return RefundPolicy(frozenset(exact), frozenset(classes))


def parse_settled_cost(raw: object, hold: int) -> tuple[int, str | None]:
    """The real cost an upstream reported, bounded by the hold; with a reason when it was not usable."""
    if raw is None or raw == "":
        return hold, "missing"
    text = raw.strip() if isinstance(raw, str) else ""
    if not SETTLED_COST.match(text):
        return hold, f"not a whole non-negative number: {str(raw)[:40]!r}"
    value = int(text)
    if value > hold:
        return hold, f"{value} is above the hold of {hold}"
    return value, None
