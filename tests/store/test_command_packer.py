"""The charge's command, packed a part at a time: always the bytes hiredis packs whole.

Redis runs what these bytes say; a byte wrong would charge with the wrong arguments. Held against
hiredis itself over generated commands, with the values that compare equal but pack apart (1, 1.0,
True), keys that repeat and change, and a cache that fills up.
"""

from __future__ import annotations

from typing import Any

import hiredis
from hypothesis import given, settings
from hypothesis import strategies as st

from creditgate.store.hot_path import CommandPacker

KEYS = st.lists(st.sampled_from(["{a}:state", "{a}:ledger", "{b}:state", "é:{c}", ""]), max_size=4)
ARGS = st.lists(
    st.one_of(
        st.sampled_from(["", "charge", "1", 1, 0, True, False, 1.0, 2**70, -5, b"", b"\x00raw"]),
        st.text(max_size=20),
        st.integers(min_value=-(2**63), max_value=2**64),
    ),
    max_size=8,
)


def packed(pack: Any, *parts: Any) -> bytes | type[Exception]:
    """The bytes, or the class of what it raised (hiredis refuses a bool)."""
    try:
        result: bytes = pack(*parts)
    except Exception as error:
        return type(error)
    return result


def whole(sha: str, keys: list[str], args: list[Any]) -> bytes:
    result: bytes = hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args))
    return result


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["sha1", "sha2"]), KEYS, ARGS), min_size=1, max_size=12))
def test_a_command_packed_in_parts_is_the_one_hiredis_packs_whole(
    commands: list[tuple[str, list[str], list[Any]]],
) -> None:
    packer = CommandPacker(limit=3)  # small: the cache fills and starts again within a history
    for sha, keys, args in commands:
        assert packed(packer, "EVALSHA", sha, keys, args) == packed(whole, sha, keys, args)


def test_the_heads_kept_are_bounded() -> None:
    packer = CommandPacker(limit=2)
    for account in range(10):
        packer("EVALSHA", "sha", [f"{{{account}}}:state"], [1])
    assert len(packer._heads) <= 2
