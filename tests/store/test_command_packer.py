"""The charge's command, what repeats packed once: always the bytes hiredis packs whole.

Redis runs what these bytes say; a byte wrong would charge with the wrong arguments. Held against
hiredis itself over generated commands, with the values that compare equal but pack apart (1, 1.0,
True), strings hiredis refuses, keys that repeat and change, scripts that change, and a cache that
fills up. The store's promise under the cache (equal keys, equal commands but for the last
arguments) is held over generated requests and times.
"""

from __future__ import annotations

from typing import Any

import hiredis
from hypothesis import given, settings
from hypothesis import strategies as st

from creditgate.core.policy import ChargeRequest
from creditgate.store.hot_path import CommandPacker
from creditgate.store.keys import account_keys
from creditgate.store.replies import (
    CHARGE_VARYING,
    charge_arguments,
    charge_cache_key,
    charge_time,
    charge_varying,
)

VARYING = 2
KEYS = st.lists(st.sampled_from(["{a}:state", "{a}:ledger", "{b}:state", "é:{c}", ""]), max_size=4)
VALUES = st.one_of(
    st.sampled_from(["", "charge", "1", 1, 0, True, False, 1.0, 2**70, -5, b"", b"\x00raw", "\udc80", "é"]),
    st.text(max_size=20),
    st.integers(min_value=-(2**63), max_value=2**64),
)
ARGS = st.lists(VALUES, max_size=7)


def packed(pack: Any, *parts: Any) -> bytes | type[Exception]:
    """The bytes, or the class of what it raised (hiredis refuses a bool, a lone surrogate)."""
    try:
        result: bytes = pack(*parts)
    except Exception as error:
        return type(error)
    return result


def whole(sha: str, keys: list[str], args: list[Any]) -> bytes:
    result: bytes = hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args))
    return result


def kept(packer: CommandPacker, sha: str, keys: list[str], args: list[Any]) -> bytes:
    """Through the cache, under a key that keeps the packer's promise: the keys and the repeating
    arguments with their types (1, 1.0 and True are equal keys otherwise)."""
    repeating = tuple((type(v), v) for v in args[: max(len(args) - VARYING, 0)])
    return packer(sha, (tuple(keys), len(args), repeating), tuple(args[-VARYING:]), lambda: (keys, args))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["sha1", "sha2"]), KEYS, ARGS), min_size=1, max_size=12))
def test_a_command_packed_from_a_kept_head_is_the_one_hiredis_packs_whole(
    commands: list[tuple[str, list[str], list[Any]]],
) -> None:
    packer = CommandPacker(VARYING, limit=3)  # small: the cache fills and starts again within a history
    for sha, keys, args in commands:
        assert packed(kept, packer, sha, keys, args) == packed(whole, sha, keys, args)


def test_without_a_key_or_with_one_it_cannot_hash_the_command_is_packed_whole() -> None:
    packer = CommandPacker(VARYING)
    assert packer("sha", None, (2, 3), lambda: (["k"], [1, 2, 3])) == whole("sha", ["k"], [1, 2, 3])
    assert packer("sha", ["unhashable"], (2, 3), lambda: (["k"], [1, 2, 3])) == whole("sha", ["k"], [1, 2, 3])
    assert not packer._heads


def test_varying_values_that_are_not_the_last_arguments_are_never_kept() -> None:
    packer = CommandPacker(VARYING)
    assert packer("sha", "key", (3,), lambda: (["k"], [1, 2, 3])) == whole("sha", ["k"], [1, 2, 3])
    assert packer("sha", "key", (1, 2), lambda: (["k"], [1, 2, 3])) == whole("sha", ["k"], [1, 2, 3])
    assert not packer._heads


def test_a_head_kept_for_another_script_is_never_sent() -> None:
    """kong-pdk's threads: a charge that began before a reload can store its head after the cache
    started again for the new SHA; the head says which script it was packed for."""
    packer = CommandPacker(VARYING)
    packer("sha-new", "key", (2, 3), lambda: (["k"], [1, 2, 3]))
    packer._heads["key"] = ("sha-old", packer._heads["key"][1].replace(b"sha-new", b"sha-old"))
    assert packer("sha-new", "key", (2, 3), lambda: (["k"], [1, 2, 3])) == whole("sha-new", ["k"], [1, 2, 3])


def test_the_commands_kept_are_bounded() -> None:
    packer = CommandPacker(VARYING, limit=2)
    for account in range(10):
        packer("sha", account, (5, 6), lambda account=account: ([f"{{{account}}}:state"], [1, 5, 6]))  # type: ignore[misc]
    assert len(packer._heads) <= 2


REQUESTS = st.builds(
    ChargeRequest,
    account=st.sampled_from(["acme", "é", "a:b"]),
    cost=st.integers(0, 3),
    now=st.one_of(st.none(), st.integers(86_400 * 20_000 - 2, 86_400 * 20_000 + 2)),
    entitled=st.sampled_from([(), ("pro",), ("pro", "team")]),
    route=st.sampled_from(["global", "route:1"]),
    shadow=st.booleans(),
    idempotency_key=st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
    idempotency_window=st.sampled_from([0, 60]),
    member=st.sampled_from(["", "m"]),
    hold_seconds=st.sampled_from([0, 30]),
    settle_window=st.sampled_from([0, 86_400]),
    token=st.sampled_from(["", "0123456789abcdef"]),
    request_id=st.sampled_from(["", "r1", "r2"]),
)
MOMENTS = st.tuples(
    st.integers(86_400 * 20_000 - 2, 86_400 * 20_000 + 2), st.integers(0, 10**13), st.text(max_size=3)
)


def arguments(request: ChargeRequest, moment: tuple[int, int, str]) -> tuple[Any, tuple[Any, ...], list[Any]]:
    """The cache key, the varying values and charge.lua's KEYS and ARGV as one list, for a request
    sent at ``moment`` (Redis's second, the deadline, the token)."""
    redis_now, deadline, token = moment
    when = charge_time(request.now, redis_now)
    keys, args = charge_arguments(
        request, account_keys("cg", request.account), "cg:{m}", deadline, when, token, "t:"
    )
    return charge_cache_key(request, when), charge_varying(request, deadline, token), [*keys, *args]


@settings(max_examples=400, deadline=None)
@given(REQUESTS, MOMENTS, MOMENTS, st.data())
def test_charges_under_one_cache_key_differ_only_at_the_varying_positions(
    first: ChargeRequest, one: tuple[int, int, str], other: tuple[int, int, str], data: st.DataObject
) -> None:
    # The second request: the first's with another token and request id (mostly), or any other.
    second = data.draw(
        st.one_of(
            st.builds(
                first._replace,
                token=st.sampled_from(["", "fedcba9876543210"]),
                request_id=st.text(max_size=2),
            ),
            REQUESTS,
        )
    )
    key_1, varying_1, sent_1 = arguments(first, one)
    key_2, varying_2, sent_2 = arguments(second, other)
    assert tuple(sent_1[-CHARGE_VARYING:]) == varying_1
    assert tuple(sent_2[-CHARGE_VARYING:]) == varying_2
    if key_1 is not None and key_1 == key_2:
        assert sent_1[:-CHARGE_VARYING] == sent_2[:-CHARGE_VARYING]


def test_a_charge_with_an_idempotency_key_is_never_kept() -> None:
    """A client chooses the key, and a new one each time: kept, it would fill the cache with what the
    client sent (8 KiB a header at Kong's default), never to be packed again."""
    assert (
        charge_cache_key(ChargeRequest("acme", 1, idempotency_key="k" * 8192, idempotency_window=60), 0)
        is None
    )
    assert charge_cache_key(ChargeRequest("acme", 1, idempotency_key="k"), 0) is None
    assert charge_cache_key(ChargeRequest("acme", 1), 0) is not None
