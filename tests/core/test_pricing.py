"""Cost rules' path patterns: what a pattern matches, that matching takes time linear in the path
whatever the pattern and the path (counted in characters examined, not timed), and the bound on the
path length a cost rule considers."""

from __future__ import annotations

import re
from typing import Any, SupportsIndex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from creditgate.core.pricing import MAX_PATH_LENGTH, PathPattern, Pricing, compile_path, parse_rules
from creditgate.core.schema import declared
from creditgate.errors import ConfigError

# What `costs[].path` means, as the README states it: `*` is [^/]*, `**` is anything, every other
# character itself, over the whole path. The matcher must agree with this reading on every input.


def reference(pattern: str, path: str) -> bool:
    parts = re.split(r"(\*\*|\*)", pattern)
    regex = "".join({"**": ".*", "*": "[^/]*"}.get(part, re.escape(part)) for part in parts)
    return re.fullmatch(regex, path, re.DOTALL) is not None


def by_table(pattern: str, path: str) -> bool:
    """The same reading, decided token by token over the path's positions (where each token can end):
    never exponential, so that it can judge long paths the regular expression would take years over."""
    tokens = [part for part in re.split(r"(\*\*+|\*)", pattern) if part]
    reached = [True] + [False] * len(path)  # the positions the tokens so far can end at
    for part in tokens:
        after = [False] * (len(path) + 1)
        if part.startswith("*"):
            open_ = False
            for at in range(len(path) + 1):
                open_ = open_ or reached[at]
                after[at] = open_
                if at < len(path) and path[at] == "/" and part == "*":
                    open_ = False
        else:
            for at in range(len(path) - len(part) + 1):
                if reached[at] and path.startswith(part, at):
                    after[at + len(part)] = True
        reached = after
    return reached[len(path)]


class Counted(str):
    """A path that counts the characters the matcher's string operations may examine: a prefix or
    suffix test its length, a search the positions from where it starts (the window's end, searching
    backwards) to the far end of what it found, or its whole window when it found nothing. The matcher
    does nothing else with a path but take its length and, for a pattern without wildcards, compare it.
    """

    examined: int

    def startswith(self, prefix: Any, *args: Any) -> bool:
        self.examined += len(prefix)
        return str.startswith(self, prefix, *args)

    def endswith(self, suffix: Any, *args: Any) -> bool:
        self.examined += len(suffix)
        return str.endswith(self, suffix, *args)

    def find(self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None) -> int:
        begin = 0 if start is None else int(start)
        stop = len(self) if end is None else min(int(end), len(self))
        found = str.find(self, sub, begin, stop)
        self.examined += max(0, (found + len(sub) if found >= 0 else stop) - begin)
        return found

    def rfind(self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None) -> int:
        begin = 0 if start is None else int(start)
        stop = len(self) if end is None else min(int(end), len(self))
        found = str.rfind(self, sub, begin, stop)
        self.examined += max(0, stop - (found if found >= 0 else begin))
        return found


def examined(pattern: str, path: str) -> tuple[bool, int]:
    counted = Counted(path)
    counted.examined = 0
    matched = compile_path(pattern).scan(counted)
    return matched, counted.examined


# What a pattern matches


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/v1/models/*", "/v1/models/gpt", True),
        ("/v1/models/*", "/v1/models/", True),
        ("/v1/models/*", "/v1/models/gpt/versions", False),
        ("/v1/models/*", "/v1/model", False),
        ("/v1/files/**", "/v1/files/a", True),
        ("/v1/files/**", "/v1/files/a/b", True),
        ("/v1/files/**", "/v1/files", False),
        ("/v1/completions", "/v1/completions", True),
        ("/v1/completions", "/v1/completions/", False),
        ("/v1/completions", "/v1/completion", False),
        ("/v1/**/files/**/versions/**/download", "/v1/a/files/b/versions/c/download", True),
        ("/v1/**/files/**/versions/**/download", "/v1/a/b/files/b/c/versions/c/d/download", True),
        ("/v1/**/files/**/versions/**/download", "/v1/files/versions/download", False),
        ("/v1/**/files/**/versions/**/download", "/v1/a/files/b/versions/c/downloads", False),
        ("/v1/*/x*y/*", "/v1/a/xay/b", True),
        ("/v1/*/x*y/*", "/v1/a/xa/y/b", False),
        ("/v1/*.json", "/v1/a.b.json", True),
        ("/v1/*.json", "/v1/a/b.json", False),
        ("/a***b", "/a/x/b", True),  # a run of stars longer than two is **
        ("/a*/*b", "/a/b", True),
        ("/a*/*b", "/ax/yb", True),
        ("/a*/*b", "/ax/y/b", False),
    ],
)
def test_a_path_pattern_matches_the_whole_path_with_star_in_a_segment_and_double_star_across(
    pattern: str, path: str, matches: bool
) -> None:
    compiled = compile_path(pattern)
    assert compiled.matches(path) is matches
    assert compiled.scan(path) is matches
    assert reference(pattern, path) is matches
    assert by_table(pattern, path) is matches


def test_double_star_matches_any_character_a_normalized_path_can_hold_including_a_newline() -> None:
    # Kong's normalized path decodes %0A: a pattern must not lose its grip on it.
    assert compile_path("/v1/**").matches("/v1/a\nb")
    assert compile_path("/v1/*").matches("/v1/a\nb")
    assert not compile_path("/v1/completions").matches("/v1/completions\n")


PATTERN_CHARS = st.sampled_from(["/", "a", "b", "*", "**", "ab", "/a", "a/"])
PATH_CHARS = st.sampled_from(["/", "a", "b", "ab", "\n", "//"])


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(PATTERN_CHARS, max_size=5).map(lambda parts: "/" + "".join(parts)),
    st.lists(PATH_CHARS, max_size=10).map(lambda parts: "/" + "".join(parts)),
)
def test_the_matcher_agrees_with_the_regular_expression_reading_of_every_pattern(
    pattern: str, path: str
) -> None:
    expected = reference(pattern, path)
    assert by_table(pattern, path) is expected
    compiled = compile_path(pattern)
    assert compiled.matches(path) is expected, (pattern, path)
    assert compiled.scan(path) is expected, (pattern, path)


def bound(pattern: str, path: str) -> int:
    """The characters matching may examine: a few times the path per "/" of the pattern, and the
    pattern's literals once."""
    return (pattern.count("/") + 3) * len(path) + len(pattern)


@settings(max_examples=3000, deadline=None)
@given(
    st.lists(PATTERN_CHARS, max_size=14).map(lambda parts: "/" + "".join(parts)),
    st.lists(PATH_CHARS, max_size=60).map(lambda parts: "/" + "".join(parts)),
)
def test_on_longer_patterns_and_paths_the_matcher_agrees_and_stays_within_its_bound(
    pattern: str, path: str
) -> None:
    matched, work = examined(pattern, path)
    assert matched is by_table(pattern, path) is compile_path(pattern).matches(path), (pattern, path)
    assert work <= bound(pattern, path)


@pytest.mark.parametrize(
    ("pattern", "by"),
    [
        ("/v1/completions", "equality"),
        ("/v1/models/*", "regular expression"),
        ("/v1/files/**", "regular expression"),
        ("/v1/*.json", "regular expression"),
        ("/v1/*/files/*", "regular expression"),
        ("/v1/*/files/*/versions/**", "regular expression"),
        ("/v1/*x/files/*", "the linear matcher"),
        ("/v1/**/files/**/versions/**/download", "the linear matcher"),
        ("/v1/**/*.json", "the linear matcher"),
    ],
)
def test_a_request_is_matched_by_a_regular_expression_only_where_it_cannot_backtrack(
    pattern: str, by: str
) -> None:
    # A regular expression with one wildcard makes a single choice (how much the wildcard takes),
    # each checked against the fixed literal after it: linear. A * followed by "/" has no choice to
    # take back (it ends at the segment's "/"). Any other wildcard before the last backtracks.
    compiled = compile_path(pattern)
    if by == "the linear matcher":
        assert compiled.test == compiled.scan
    elif by == "regular expression":
        regex = getattr(compiled.test, "__self__", None)
        assert isinstance(regex, re.Pattern) and regex.flags & re.DOTALL
        choices = re.findall(r"(\[\^/\]\*|\.\*)(?!/)", regex.pattern)
        assert len(choices) == 1  # the last wildcard: every other is a * before a "/"
    else:
        assert compiled.test == compiled.scan == compiled.text.__eq__


def test_a_pattern_must_start_with_a_slash() -> None:
    with pytest.raises(ConfigError, match="must start with '/'"):
        compile_path("v1/*")


def test_a_compiled_pattern_says_what_it_was_compiled_from() -> None:
    assert compile_path("/v1/*/x").text == "/v1/*/x"
    assert compile_path("/v1/*/x") == compile_path("/v1/*/x")
    assert isinstance(compile_path("/v1/*/x"), PathPattern)


# Linear time: the work is counted in characters examined


def issue_path(length: int) -> str:
    return ("/v1/" + "files/versions/" * length)[: length - 1] + "x"


CRAFTED = [
    # The issue's pattern and its crafted path: a backtracking matcher tries every way of splitting
    # the path among the three **, cubic in the path (1 s for 8,000 characters).
    ("/v1/**/files/**/versions/**/download", issue_path),
    ("/v1/**/files/**/versions/**/download", lambda n: issue_path(n - 9) + "/download"),
    # Stars within one segment, and a segment as long as the path.
    ("/v1/*a*a*a*a*b", lambda n: "/v1/" + "a" * (n - 4)),
    ("/v1/*a*a*a*a*b", lambda n: "/v1/" + "a" * (n - 5) + "b"),
    ("/v1/**a**a**a**a**b", lambda n: "/v1/" + "a" * (n - 4)),
    ("/**/*/**/*/**/x", lambda n: "/a" * (n // 2)),
    ("/*a/*a/*a/b", lambda n: ("/" + "a/" * n)[:n]),
    # Pieces with * between two **: tried at every "/" of the path.
    ("/**/a*/*a/b*/**/x", lambda n: "/a" * (n // 2)),
    ("/**/a*/*a/b*/**/x", lambda n: "/a" * (n // 2 - 7) + "/ab/ba/bb/q/x"),
    ("/**a*b**", lambda n: ("/" + "a/" * n)[:n]),
    ("/**a*b**", lambda n: ("/" + "a/" * n)[: n - 2] + "ab"),
]


@pytest.mark.parametrize(("pattern", "crafted"), CRAFTED)
@pytest.mark.parametrize("length", [1_000, 2_000, 4_000, MAX_PATH_LENGTH])
def test_a_crafted_path_costs_the_matcher_work_linear_in_its_length(
    pattern: str, crafted: Any, length: int
) -> None:
    path = crafted(length)
    matched, work = examined(pattern, path)
    assert matched is by_table(pattern, path)
    assert work <= bound(pattern, path)


# The bound on the path a cost rule considers


def test_the_path_bound_is_what_nginx_lets_through_by_default() -> None:
    # nginx answers 414 itself to a request line longer than one large_client_header_buffers buffer
    # (8k by default, which Kong keeps): a longer path reaches the plugin only on a raised buffer.
    assert MAX_PATH_LENGTH == 8192


def test_the_settings_description_states_the_bound() -> None:
    costs = declared("costs")
    assert (
        f"longer than {MAX_PATH_LENGTH} characters is refused with 414 path_too_long" in costs["description"]
    )


def test_a_path_up_to_the_bound_is_priced_by_the_rules_and_a_longer_one_is_not_priced() -> None:
    pricing = Pricing(1, parse_rules([{"path": "/v1/**", "cost": 7}]))
    longest = "/v1/" + "a" * (MAX_PATH_LENGTH - 4)
    assert pricing.cost_of("GET", longest) == 7
    assert pricing.cost_of("GET", longest + "a") is None


def test_rules_without_a_path_price_any_path_they_are_given() -> None:
    pricing = Pricing(1, parse_rules([{"methods": ["POST"], "cost": 7}]))
    assert pricing.cost_of("POST", "/" + "a" * MAX_PATH_LENGTH) == 7
    assert pricing.cost_of("GET", "/" + "a" * MAX_PATH_LENGTH) == 1
