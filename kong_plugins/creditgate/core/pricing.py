"""What a request costs, and which responses give the charge back.

Cost rules are tried in order; the first whose method and path match sets the cost, and a request no
rule matches costs the plugin's flat ``cost``. A path pattern matches the whole normalized path:
``*`` stands for one path segment or part of one (no ``/``), ``**`` for anything (``/`` included),
every other character for itself. ``/v1/models/*`` matches ``/v1/models/gpt`` but not
``/v1/models/gpt/versions``; ``/v1/files/**`` matches both ``/v1/files/a`` and ``/v1/files/a/b``.

A pattern is matched without backtracking, in time linear in the path whatever the pattern and the
path (``PathPattern``); an entry with a path rule prices paths of at most ``MAX_PATH_LENGTH``
characters, and the policy refuses a longer one (``path_too_long``) rather than charge it a cost no
rule chose.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from creditgate.core.schema import COST_RULE_FIELDS, METHODS, between
from creditgate.errors import ConfigError

STATUS_PATTERN = re.compile(r"^[1-5]([0-9]{2}|xx)$")
SETTLED_COST = re.compile(r"^[0-9]{1,16}$")
_DOUBLE_STAR = re.compile(r"\*\*+")  # ** (and a longer run, the same: .* absorbs [^/]*)
_WILDCARD = re.compile(r"\*+")

# The longest path a cost rule considers. nginx answers 414 itself to a request line longer than one
# large_client_header_buffers buffer, 8k unless the operator raises it (Kong's nginx template keeps
# nginx's default), so with Kong's defaults no longer path reaches the plugin. The matcher is linear in
# the path; the bound caps its work per request where the buffer was raised.
MAX_PATH_LENGTH = 8192

Literals = tuple[str, ...]  # a piece of a pattern without **, cut at its *s: one * between each two


@dataclass(frozen=True)
class Floating:
    """A piece between two ``**``s that holds a ``*``, cut at its "/"s into globs, each cut at its
    ``*``s: each glob matches within one path segment, and the pieces' "/"s meet the path's in order."""

    globs: tuple[Literals, ...]


@dataclass(frozen=True)
class PathPattern:
    """A cost rule's path pattern, cut at its ``**``s into pieces, each cut at its ``*``s into literals.

    Matching places each literal once, never trying a place again, so the work is linear in the path
    whatever the pattern and the path (the regular expression this replaces backtracked: cubic in the
    path for ``/v1/**/files/**/versions/**/download``). Each piece goes where it leaves the most room to
    the rest, which is always a right place: the first piece at the start, each of its literals at its
    earliest place (the ``*`` before it takes the least it can); the last piece at the end, each literal
    at its latest place; a piece between two ``**``s where it ends earliest. Moving a literal that way
    never breaks the ``*`` on its other side: that ``*`` gains only characters of the gap the literal
    moved across, which held no "/", or of a copy of the literal, whose "/"s an overlapping copy
    repeats. ``tests/core/test_pricing.py`` counts the characters examined, and holds the matcher to
    the regular expression's reading of every pattern.
    """

    text: str
    first: Literals  # before the first **, at the start (no **: the whole pattern but its last literal)
    tail: str = ""  # the literal after the last wildcard, at the end
    middle: tuple[str | Floating, ...] = ()  # between **s: a literal, or a piece with *s
    last: Literals | None = None  # after the last ** (None: there is none), at the end
    shortest: int = 0  # the length of the shortest path it matches
    # ``scan`` is the linear matcher for this pattern's shape; ``test`` is what a request's path is
    # asked (truthy on a match): the regular expression where it cannot backtrack, as cheap as ever,
    # else ``scan``. A regular expression backtracks only into a wildcard that has a choice to take
    # back: the last one (each length it takes is checked once, against the fixed literal after it),
    # or a * followed by "/" (it ends at the segment's "/" or nowhere: its other lengths fail on the
    # "/" at once). So it is linear when every wildcard but the last is such a *.
    scan: Callable[[str], bool] = field(init=False, repr=False, compare=False)
    test: Callable[[str], object] = field(init=False, repr=False, compare=False)
    between: tuple[str, ...] = field(init=False, repr=False, compare=False)  # middle, when all literals

    def __post_init__(self) -> None:
        between = tuple(piece for piece in self.middle if isinstance(piece, str))
        object.__setattr__(self, "between", between if len(between) == len(self.middle) else ())
        scan: Callable[[str], bool]
        if "*" not in self.text:
            scan = self.text.__eq__
        elif self.last is None:
            scan = self._stars
        elif len(self.first) == 1 and len(self.between) == len(self.middle) and len(self.last) == 1:
            scan = self._double_stars
        else:
            scan = self._general
        object.__setattr__(self, "scan", scan)
        parts, stars = _WILDCARD.split(self.text), _WILDCARD.findall(self.text)
        safe = all(
            run == "*" and after.startswith("/") for run, after in zip(stars[:-1], parts[1:-1], strict=True)
        )
        object.__setattr__(self, "test", _regex(self.text).fullmatch if stars and safe else scan)

    def matches(self, path: str) -> bool:
        return bool(self.test(path))

    def _double_stars(self, path: str) -> bool:
        """Only **s: each literal between two at its earliest place."""
        head, tail = self.first[0], self.tail
        if len(path) < self.shortest or not path.startswith(head) or not path.endswith(tail):
            return False
        start, end = len(head), len(path) - len(tail)
        for literal in self.between:
            found = path.find(literal, start, end)
            if found < 0:
                return False
            start = found + len(literal)
        return True

    def _stars(self, path: str) -> bool:
        """No **: the head, each * with the literal after it, the tail."""
        tail = self.tail
        end = len(path) - len(tail)
        if len(path) < self.shortest or not path.endswith(tail):
            return False
        start = _earliest(path, self.first, 0, end)
        return start >= 0 and path.find("/", start, end) < 0  # the * before the tail

    def _general(self, path: str) -> bool:
        if len(path) < self.shortest:
            return False
        start = _earliest(path, self.first, 0, len(path))
        for piece in self.middle:
            if start < 0:
                return False
            if isinstance(piece, str):
                found = path.find(piece, start)
                start = found + len(piece) if found >= 0 else -1
            else:
                start = _ending(path, piece.globs, start)
        assert self.last is not None
        return start >= 0 and _latest(path, self.last, start)


def _earliest(path: str, literals: Literals, start: int, end: int) -> int:
    """Where ``literals`` end when the first is at ``start`` and each other at its earliest place in
    ``[start, end)`` with no "/" between it and the one before (the ``*``); -1 when they do not fit."""
    first = literals[0]
    if not path.startswith(first, start, end):
        return -1
    start += len(first)
    slash = -1  # the first "/" at or after start (end: none), once looked for
    for literal in literals[1:]:
        if slash < start:
            slash = path.find("/", start, end)
            if slash < 0:
                slash = end
        found = path.find(literal, start, min(slash + len(literal), end))
        if found < 0:
            return -1
        start = found + len(literal)
    return start


def _latest(path: str, literals: Literals, low: int) -> bool:
    """Whether ``literals`` fit in ``[low, len(path))`` with the last at the end and each other at its
    latest place with no "/" between it and the one after (the ``*``)."""
    stop = len(path) - len(literals[-1])
    if stop < low or not path.endswith(literals[-1]):
        return False
    slash = len(path)  # the last "/" before stop (low - 1: none), once looked for
    for literal in reversed(literals[:-1]):
        if slash >= stop:
            slash = path.rfind("/", low, stop)
            if slash < 0:
                slash = low - 1
        found = path.rfind(literal, max(low, slash + 1 - len(literal)), stop)
        if found < 0:
            return False
        stop = found
    return True


def _ending(path: str, globs: tuple[Literals, ...], low: int) -> int:
    """The earliest end of a piece between two ``**``s that starts at or after ``low`` (-1: none).

    The ``*``s hold no "/", so the piece's "/"s meet consecutive "/"s of the path. Without one, the
    piece lies within a path segment: the first segment that holds it (its literals in order, each at
    its earliest place) has the earliest end. With some, the piece's first "/" is tried on each of the
    path's in turn, and the first that fits has the earliest end; each try reads as many segments as
    the piece spans.
    """
    if len(globs) == 1:
        literals = globs[0]
        while True:
            slash = path.find("/", low)
            end = len(path) if slash < 0 else slash
            found = _within(path, literals, low, end)
            if found >= 0 or slash < 0:
                return found
            low = slash + 1
    head, inner, rest = globs[0], globs[1:-1], globs[-1]
    segment = low  # where the segment before the "/" tried starts (or low)
    slash = path.find("/", low)
    while slash >= 0:
        if _ends_at(path, head, segment, slash):
            start = slash + 1
            for glob in inner:
                end = path.find("/", start)
                if end < 0:
                    return -1  # too few "/"s left for the piece: no later try has more
                if not _fills(path, glob, start, end):
                    break
                start = end + 1
            else:
                end = path.find("/", start)
                found = _earliest(path, rest, start, len(path) if end < 0 else end)
                if found >= 0:
                    return found
        segment = slash + 1
        slash = path.find("/", segment)
    return -1


# Within one path segment [start, end), which holds no "/": a glob's * there is anything.


def _within(path: str, literals: Literals, start: int, end: int) -> int:
    """The earliest end of the literals in order within [start, end), or -1."""
    for literal in literals:
        found = path.find(literal, start, end)
        if found < 0:
            return -1
        start = found + len(literal)
    return start


def _ends_at(path: str, literals: Literals, low: int, end: int) -> bool:
    """Whether the glob matches [x, end) for some x >= low."""
    stop = end - len(literals[-1])
    if stop < low or not path.endswith(literals[-1], low, end):
        return False
    return _within(path, literals[:-1], low, stop) >= 0


def _fills(path: str, literals: Literals, start: int, end: int) -> bool:
    """Whether the glob matches [start, end) whole."""
    if len(literals) == 1:
        return end - start == len(literals[0]) and path.startswith(literals[0], start, end)
    stop = end - len(literals[-1])
    if stop < start + len(literals[0]) or not path.endswith(literals[-1], start, end):
        return False
    return (
        path.startswith(literals[0], start, end)
        and _within(path, literals[1:-1], start + len(literals[0]), stop) >= 0
    )


def _regex(pattern: str) -> re.Pattern[str]:
    """The pattern as a regular expression: * is [^/]*, ** anything (a newline too), the rest itself."""
    parts = _WILDCARD.split(pattern)
    stars = _WILDCARD.findall(pattern)
    regex = re.escape(parts[0]) + "".join(
        ("[^/]*" if len(run) == 1 else ".*") + re.escape(literal)
        for run, literal in zip(stars, parts[1:], strict=True)
    )
    return re.compile(regex, re.DOTALL)


def compile_path(pattern: str) -> PathPattern:
    if not pattern.startswith("/"):
        raise ConfigError(f"a cost rule's path must start with '/', got {pattern!r}")
    pieces = [tuple(piece.split("*")) for piece in _DOUBLE_STAR.split(pattern)]
    shortest = sum(len(literal) for piece in pieces for literal in piece)
    if len(pieces) == 1:
        literals = pieces[0]
        if len(literals) == 1:
            return PathPattern(pattern, literals, shortest=shortest)
        return PathPattern(pattern, literals[:-1], literals[-1], shortest=shortest)
    middle = tuple(
        piece[0]
        if len(piece) == 1
        else Floating(tuple(tuple(glob.split("*")) for glob in "*".join(piece).split("/")))
        for piece in pieces[1:-1]
    )
    return PathPattern(pattern, pieces[0], pieces[-1][-1], middle, pieces[-1], shortest)


@dataclass(frozen=True)
class CostRule:
    methods: frozenset[str]
    path: PathPattern | None
    cost: int

    def matches(self, method: str, path: str) -> bool:
        if self.methods and method.upper() not in self.methods:
            return False
        return self.path is None or self.path.matches(path)


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

    def cost_of(self, method: str, path: str) -> int | None:
        """The cost of a request, or None for a path longer than ``MAX_PATH_LENGTH`` when a rule reads
        the path: such a request is not priced (the policy refuses it, ``path_too_long``)."""
        if len(path) > MAX_PATH_LENGTH and self.needs_path:
            return None
        for rule in self.rules:  # CostRule.matches, inlined: one call less per rule on every request
            if rule.methods and method.upper() not in rule.methods:
                continue
            if rule.path is None or rule.path.test(path):
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
