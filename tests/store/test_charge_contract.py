"""The charge's contract, held by position for speed in five places, checked here against each other by
name: the policy builds a ChargeRequest from a positional tuple (``policy.charge_request``), the store
encodes it to ARGV (``replies.charge_arguments``), charge.lua's header states that ARGV and its locals
read it, the script's ``answer`` writes the reply, and ``replies.charge_reply`` decodes it into
ChargeResult. Plain values; the script is read, not run."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest
import redis

from creditgate.core.config import parse_config
from creditgate.core.decision import ChargeResult, Reason
from creditgate.core.policy import ChargeRequest, RequestFacts, charge_request
from creditgate.errors import StoreDataError, StoreEmpty, StoreTimeout
from creditgate.store.keys import TOKEN_SECONDS, account_keys
from creditgate.store.replies import USAGE_TTL_SECONDS, charge_arguments, charge_reply, data_error

SCRIPT = (resources.files("creditgate.store") / "lua" / "charge.lua").read_text()
REPLY_FIELDS = (*ChargeResult._fields, "redis_ms")


def answer_fields() -> list[str]:
    """The names in the table charge.lua's ``answer`` returns."""
    match = re.search(r"local function answer\(.*?\)\n.*?return \{(.*?)\}\nend", SCRIPT, re.S)
    assert match, "charge.lua has no answer function"
    return [name.strip() for name in match.group(1).split(",")]


def header_fields() -> list[str]:
    """The names the header's "Returns {...}" lists, in its order."""
    match = re.search(r"^-- Returns \{(.*?)\}", SCRIPT, re.S | re.M)
    assert match, "charge.lua's header states no reply"
    text = re.sub(r"\([^)]*\)", "", match.group(1).replace("\n--", " "))
    return [name.strip() for name in text.split(",")]


def test_the_script_answers_in_one_place() -> None:
    assert len(re.findall(r"\breturn \{", SCRIPT)) == 1  # in answer: no reply written by hand elsewhere
    assert SCRIPT.count("local function answer(") == 1


def test_the_reply_is_charge_results_fields_in_its_order_then_redis_clock() -> None:
    assert answer_fields() == list(REPLY_FIELDS)


def test_the_header_states_the_reply_in_the_order_the_script_writes_it() -> None:
    assert header_fields() == list(REPLY_FIELDS)


def reply(**changes: Any) -> list[Any]:
    """A reply with a distinct value in every field, as the script would send it."""
    values: dict[str, Any] = {name: 1000 + i for i, name in enumerate(REPLY_FIELDS)}
    values.update(allowed=1, reason="", plan="pro", status="active", charge_id="1767225600000-0", replayed=0)
    values.update(changes)
    return [values[name] for name in REPLY_FIELDS]


def test_every_field_of_the_reply_lands_in_the_field_of_its_name() -> None:
    redis_ms, result = charge_reply(reply())
    assert redis_ms == 1000 + REPLY_FIELDS.index("redis_ms")
    assert isinstance(result, ChargeResult)
    decoded = result._asdict()
    assert decoded.pop("allowed") is True
    assert decoded.pop("reason") is None
    assert decoded.pop("replayed") is False
    assert decoded.pop("plan") == "pro" and decoded.pop("status") == "active"
    assert decoded.pop("charge_id") == "1767225600000-0"
    assert decoded == {name: 1000 + REPLY_FIELDS.index(name) for name in decoded}


def test_a_refusal_decodes_its_reason_and_a_replay_its_flag() -> None:
    _, refused = charge_reply(reply(allowed=0, reason="member_cap_reached"))
    assert isinstance(refused, ChargeResult)
    assert (refused.allowed, refused.reason) == (False, Reason.MEMBER_CAP_REACHED)
    _, replayed = charge_reply(reply(replayed=1))
    assert isinstance(replayed, ChargeResult) and replayed.replayed


@pytest.mark.parametrize(
    ("reason", "error"), [("deadline_passed", StoreTimeout), ("store_empty", StoreEmpty)]
)
def test_the_reasons_only_the_store_sees_are_errors_and_still_carry_redis_clock(
    reason: str, error: type[Exception]
) -> None:
    redis_ms, outcome = charge_reply(reply(allowed=0, reason=reason, redis_ms=42))
    assert redis_ms == 42  # the clock is learnt from a late charge too
    assert isinstance(outcome, error)


def script_arguments() -> dict[str, int]:
    """Each named local of charge.lua read from ARGV, with its position (1-based)."""
    named = dict(
        (name, int(index))
        for name, index in re.findall(r"^local (\w+) = (?:arg_int\(|ARGV\[)(\d+)", SCRIPT, re.M)
    )
    named["now"] = int(re.search(r"now = arg_int\((\d+)", SCRIPT).group(1))  # type: ignore[union-attr]
    return named


def test_a_charge_request_encodes_to_the_arguments_the_script_names() -> None:
    keys = account_keys("cg", "team-a")
    request = ChargeRequest(
        "team-a",
        7,
        now=1_767_225_600,
        entitled=("pro", "team"),
        route="route:r-1",
        ledger_retention=500,
        shadow=True,
        idempotency_key="k-1",
        idempotency_window=60,
        member="ann",
        hold_seconds=30,
        settle_window=86_400,
    )
    _, args = charge_arguments(request, keys, "cg:{store}", 99, None, "5eed", "cg:{totals}:totals:")
    position = script_arguments()
    expected = {
        "now": 1_767_225_600,
        "cost": 7,
        "entitled": "pro,team",
        "route": "route:r-1",
        "retention": 500,
        "usage_ttl": USAGE_TTL_SECONDS,
        "deadline": 99,
        "shadow": "shadow",
        "idempotency_window": 60,
        "member": "ann",
        "hold_seconds": 30,
        "settle_window": 86_400,
        "token": "5eed",
        "token_seconds": TOKEN_SECONDS,
        "account": "team-a",  # the day's totals count under it
        "request_id": "",
    }
    assert sorted(position) == sorted(expected)
    assert len(args) == len(expected)
    assert {name: args[position[name] - 1] for name in expected} == expected


def test_the_keys_are_the_accounts_in_the_scripts_order() -> None:
    keys = account_keys("cg", "acme")
    request = ChargeRequest("acme", 1, now=1_767_225_600, idempotency_key="k", idempotency_window=60)
    sent, _ = charge_arguments(request, keys, "cg:{store}", 0)
    assert sent == [
        keys.state,
        keys.ledger,
        keys.usage(1_767_225_600),
        keys.request("consumer\0\0global\0" + "1\0k"),  # the consumer's, bound to the route and the cost
        keys.members,
        keys.holds,
        keys.holds_index,
        "cg:{store}",
        keys.request("global\0" + "1\0k"),  # where versions before member-bound keys kept it
        keys.members,  # no day's totals: any key of the account's slot
    ]


def test_a_members_key_is_its_own_and_the_accounts_key_before_the_change_is_sent_beside_it() -> None:
    keys = account_keys("cg", "acme")
    ann, bob, own = (
        charge_arguments(
            ChargeRequest("acme", 2, now=1_767_225_600, idempotency_key="order-1042", idempotency_window=60,
                          member=member),
            keys, "m", 0,
        )[0]
        for member in ("ann", "bob", "")
    )  # fmt: skip
    assert len({ann[3], bob[3], own[3]}) == 3
    assert ann[8] == bob[8] == own[8] == keys.request("global\0" + "2\0order-1042")
    assert ann[8] not in (ann[3], bob[3], own[3])


def test_without_an_idempotency_key_the_window_is_off_and_redis_clock_decides() -> None:
    keys = account_keys("cg", "acme")
    sent, args = charge_arguments(ChargeRequest("acme", 1, idempotency_window=60), keys, "m", 0)
    position = script_arguments()
    assert args[position["idempotency_window"] - 1] == 0
    assert args[position["now"] - 1] == ""
    assert args[position["shadow"] - 1] == "charge"
    assert sent[3] == sent[8] == keys.members  # any key of the account's slot


def test_the_policy_fills_each_field_of_the_charge_request_by_its_name() -> None:
    """Every field from a setting of its own, each value distinct: two positions swapped fail."""
    config = parse_config(
        {
            "cost": 3,
            "plans": ["pro", "team"],
            "route_id": "r-9",
            "ledger_retention": 500,
            "idempotency_window": 600,
            "pool_tag_prefix": "pool:",
            "settle_header": "X-Cost",
            "settle_timeout": 120,
            "refund_on_failure": True,
        }
    )
    facts = RequestFacts({"id": "c-1", "tags": ["pool:team-a"]}, idempotency_key="k-1")
    request = charge_request(config, facts, 1_767_225_600)
    assert request is not None
    assert request._asdict() == {
        "account": "team-a",
        "cost": 3,
        "now": 1_767_225_600,
        "entitled": ("pro", "team"),
        "route": "route:r-9",
        "ledger_retention": 500,
        "shadow": False,
        "idempotency_key": "k-1",
        "idempotency_window": 600,
        "member": "c-1",
        "hold_seconds": 120,
        "settle_window": 86_400,
        "token": "",  # the store draws one (a gate with bypass_witness draws its own)
        "request_id": "",  # Kong's, from a gate with bypass_witness
    }
    shadowed = charge_request(parse_config({"enforce": False}), facts)
    assert isinstance(shadowed, ChargeRequest) and shadowed.shadow


def test_the_header_names_each_argument_at_the_position_the_script_reads_it() -> None:
    stated = {name: int(index) for index, name in re.findall(r"^-- ARGV\[(\d+)\]\s+(\w+):", SCRIPT, re.M)}
    assert stated == script_arguments()
    assert sorted(stated.values()) == list(range(1, len(stated) + 1))  # no gap, no position twice


def test_the_header_states_every_key_the_store_sends_in_its_order() -> None:
    stated = [int(index) for index in re.findall(r"^-- KEYS\[(\d+)\]", SCRIPT, re.M)]
    request = ChargeRequest("acme", 1, now=1_767_225_600)
    sent, _ = charge_arguments(request, account_keys("cg", "acme"), "cg:{store}", 0)
    assert stated == list(range(1, len(sent) + 1))


def test_a_wrong_type_inside_a_pipeline_is_bad_data_not_an_outage() -> None:
    """redis-py words a pipeline's error reply "Command # n (...) of pipeline caused error: ...": a
    report that reads many keys at once answers data_invalid for a key of the wrong type, as one
    command would, never "Redis is unavailable"."""
    error = redis.exceptions.ResponseError(
        "Command # 3 (ZREVRANGE cg:{totals}:totals:20260101:accounts 0 99 WITHSCORES) of pipeline "
        "caused error: WRONGTYPE Operation against a key holding the wrong kind of value"
    )
    assert isinstance(data_error(error), StoreDataError)
    assert (
        data_error(redis.exceptions.ResponseError("Command # 1 (GET k) of pipeline caused error: ERR x"))
        is None
    )
