"""What the store sends Redis and what it makes of the answers: scripts' KEYS and ARGV, replies decoded.

Plain values only, no client: the charge's arguments and reply are built and read here once, and the
Lua scripts (``store/lua/``) write them once; the tests hold the two to one order each.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import redis

from creditgate.core.balance import BalanceView
from creditgate.core.decision import ChargeResult, Reason
from creditgate.core.model import Plan, Subscription
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.errors import StoreDataError, StoreEmpty, StoreError, StoreRefused, StoreTimeout
from creditgate.store.keys import TOKEN_SECONDS, AccountKeys, day_name

USAGE_TTL_SECONDS = 400 * 86_400

STORE_EMPTY = (
    "Redis holds no credit-gate data (no store marker): it was emptied (a restart without "
    "persistence, a flush) or is not the configured database; restore it, see docs/redis.md"
)


@dataclass(frozen=True)
class SettleResult:
    """What settling a charge did. ``outcome``: applied, already, unknown, late or invalid."""

    outcome: str
    given_back: int
    balance: int
    ledger_id: str


@dataclass(frozen=True)
class CreditResult:
    """What a grant, adjustment or refund did: ``applied`` False means the idempotency key was seen.

    ``amount`` is the signed change the key answers for: this one's when applied, the first one's on a
    replay (a key recorded by an earlier version whose ledger entry is gone: this request's, unchecked).
    A positive change pays the account's debt first: ``debt_paid`` is what this call paid of it (0 on a
    replay), the balance got ``amount - debt_paid``; ``debt`` is what the account still owes.
    """

    applied: bool
    balance: int
    ledger_id: str
    amount: int
    debt: int = 0
    debt_paid: int = 0


@dataclass(frozen=True)
class ImportOutcome:
    """What import_row.lua did: ``grant`` is 1 applied, 0 already applied under that key, 2 no grant."""

    previous_plan: str
    grant: int
    balance: int
    ledger_id: str


@dataclass(frozen=True)
class AccountState:
    """An account's hash, decoded. Absent fields are their zero values."""

    account: str
    plan: str
    status: str
    starts_at: int
    anchor: int
    expires_at: int
    period: str
    allowance: int
    prepaid: bool
    balance: int
    used: int
    period_start: int
    period_end: int
    ledger_base: int
    exists: bool
    period_requests: int = 0
    period_from_balance: int = 0
    period_restarts: int = 0
    debt: int = 0  # credits owed: every request is refused while > 0, the next credit pays it first
    frozen: int = 0  # credits held by open disputes (already out of the balance)
    grace_until: int = 0  # a past_due subscription is charged until then (Unix seconds; 0: no grace)


@dataclass(frozen=True)
class LedgerEntry:
    account: str
    id: str
    fields: dict[str, str]

    @property
    def amount(self) -> int:
        return int(self.fields.get("amount", "0"))


def as_text(value: Any) -> str:
    """A reply's string: redis-py gives bytes unless the client decodes."""
    return value.decode() if isinstance(value, bytes) else str(value)


# Error replies that mean "Redis is up and the data is wrong": a script's BADDATA (see _lib.lua), a
# command on a key of the wrong type. Not an outage: never counted by the breaker, never passed through.
_DATA_ERROR = re.compile(
    r"^(?:BADDATA (?P<key>\S+) (?P<rest>.*?)(?: script: \w+, on @\S+)?\.?$|WRONGTYPE )", re.S
)

# How redis-py words an error reply inside a pipeline: "Command # 3 (ZREVRANGE k 0 99) of pipeline
# caused error: WRONGTYPE ...".
_PIPELINE_ERROR = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ", re.S)


def data_error(error: BaseException) -> StoreDataError | None:
    """The StoreDataError an error reply stands for, None for any other error."""
    if not isinstance(error, redis.exceptions.ResponseError):
        return None
    text = _PIPELINE_ERROR.sub("", str(error), count=1)  # a pipeline's reply: the command's own error
    match = _DATA_ERROR.match(text)
    if match is None:
        return None
    key = match.group("key") or ""
    if key:
        return StoreDataError(f"bad data in Redis: key {key} {match.group('rest')}", key=key)
    return StoreDataError(f"bad data in Redis: {text}")


# Error replies that mean "Redis is up but will not run the command until something changes": an
# outage, like a lost connection (counted by the breaker, passed through with fault_tolerant), never
# bad data. By the reply's code, with what it means for the operator. A script stopped by one of them
# wrote nothing: Redis refuses a script's first write only (a replica, maxmemory, a failed save), and
# the others refuse the script before it runs.
WRITE_FAULTS: dict[str, str] = {
    "READONLY": "this node is a replica (a failover demoted it, or the address names a replica); "
    "the gate reconnects and follows the address to the new master",
    "OOM": "Redis is at its maxmemory with a noeviction policy: raise maxmemory or free memory",
    "MISCONF": "Redis could not save to disk and stops writes (stop-writes-on-bgsave-error): "
    "see Redis's log, fix the disk or the save directory",
    "LOADING": "Redis is loading its data set into memory after a restart",
    "BUSY": "Redis is busy running a long script (SCRIPT KILL ends it)",
    "MASTERDOWN": "this replica lost its master and does not serve stale data",
}


def write_fault(error: BaseException) -> str | None:
    """The code of the write fault (``WRITE_FAULTS``) an error reply stands for, None for any other
    error. redis-py strips the codes it knows from the message into ``status_code``; the hot path's
    errors keep the reply whole."""
    if not isinstance(error, redis.exceptions.RedisError):
        return None
    code = getattr(error, "status_code", None) or str(error).split(" ", 1)[0]
    return code if code in WRITE_FAULTS else None


def refusal(error: BaseException, code: str) -> StoreRefused:
    """The StoreRefused a write fault's reply stands for, worded for the operator."""
    reply = str(error) if str(error).startswith(code) else f"{code} {error}"
    return StoreRefused(f"Redis refuses writes, {WRITE_FAULTS[code]}: {reply}", code=code)


# A named tuple's own __new__ is a Python function (collections.namedtuple writes one): the reply is
# decoded on every request, so it goes to tuple's, at half the cost.
_charge_result = cast(Callable[[tuple[Any, ...]], ChargeResult], partial(tuple.__new__, ChargeResult))


def request_key_input(route: str, cost: int, idempotency_key: str, member: str) -> str:
    """What the name of a charge's Idempotency-Key is made of (``AccountKeys.request`` hashes it): the
    consumer's key (the pool member's, or the account's own when ``member`` is ""), bound to the route
    and the cost, so that a key paid for on a cheap route cannot let a dearer request through."""
    return f"consumer\0{member}\0{route}\0{cost}\0{idempotency_key}"


def legacy_request_key_input(route: str, cost: int, idempotency_key: str) -> str:
    """The same, as versions before member-bound keys made it: per account (charge.lua reads such a
    key for a retry across the upgrade; it starts with the route, never with ``consumer``)."""
    return f"{route}\0{cost}\0{idempotency_key}"


# charge.lua's ARGV ends with the arguments that change from one charge of an account on a route to
# the next (charge_varying): the hot path packs what comes before them once (hot_path.CommandPacker),
# kept under charge_cache_key.
_REPEATING = ChargeRequest._fields.index("token")  # the request's fields before the varying ones
assert ChargeRequest._fields[_REPEATING:] == ("token", "request_id")


def import_terms(subscription: tuple[Subscription, Plan] | None) -> list[Any]:
    """import_row.lua's subscription terms (the plan's name first), empty for a row without one."""
    if subscription is None:
        return ["", "", 0, 0, 0, "", 0, "0"]
    sub, plan = subscription
    return [
        plan.name,
        sub.status.value,
        sub.starts_at,
        sub.anchor,
        sub.expires_at or 0,
        plan.period.value,
        plan.allowance,
        "1" if plan.prepaid else "0",
    ]


def charge_time(now: int | None, redis_now: float | None) -> int:
    """The Unix second whose day names the charge's usage and totals keys: the request's ``now``, else
    Redis's clock as this host estimates it, else this host's."""
    if now is not None:
        return now
    return int(time.time() if redis_now is None else redis_now)


def charge_cache_key(request: ChargeRequest, when: int) -> tuple[Any, ...] | None:
    """What charge_arguments' KEYS and ARGV depend on but the varying ones, for the same store: the
    request but its token and request id, and the day of ``when`` (``charge_time``). None (nothing
    kept) for a request with an idempotency key: the client picks it, a new one each time, and kept
    it would fill the cache with what clients sent."""
    if request.idempotency_key is not None:
        return None
    return (request[:_REPEATING], when // 86_400)


def charge_varying(request: ChargeRequest, deadline: int, token: str) -> tuple[int, str, str]:
    """The last of charge.lua's ARGV, which change from one charge to the next: the deadline, the
    token, Kong's request id."""
    return (deadline, token, request.request_id)


CHARGE_VARYING = 3  # len(charge_varying(...))


def charge_arguments(
    request: ChargeRequest,
    keys: AccountKeys,
    marker: str,
    deadline: int,
    redis_now: float | None = None,
    token: str = "",
    totals: str = "",
) -> tuple[list[str], list[Any]]:
    """charge.lua's KEYS and ARGV for a request (see the script's header), with the account's keys,
    its slot's store marker and the deadline on Redis's clock. ``redis_now`` (Unix seconds, Redis's
    clock as this host estimates it) picks the day's usage hash when Redis's clock decides, so that
    gateway nodes whose clocks disagree count a request near midnight to the same day. ``token`` names
    the charge for voiding it when its reply does not come back (store/voids.py). ``totals`` is where
    the day's totals over every account are counted (``Keyspace.totals_prefix``), "" for nowhere."""
    (_account, cost, now, entitled, route, ledger_retention, shadow, idempotency_key, idempotency_window,
     member, hold_seconds, settle_window, _token, _request_id) = request  # fmt: skip
    window = idempotency_window if idempotency_key else 0
    day_of = charge_time(now, redis_now)
    # Unused by the script without a key: any key of the account's slot will do. The last is where a
    # version before member-bound keys kept this key, read for a retry across the upgrade (charge.lua).
    request_key = legacy_key = keys.members
    if window:
        key = idempotency_key or ""
        request_key = keys.request(request_key_input(route, cost, key, member))
        legacy_key = keys.request(legacy_request_key_input(route, cost, key))
    return [
        keys.state,
        keys.ledger,
        keys.usage(day_of),
        request_key,
        keys.members,
        keys.holds,
        keys.holds_index,
        marker,
        legacy_key,
        totals + day_name(day_of) if totals else keys.members,  # any key of the slot when unused
    ], [
        "" if now is None else now,
        cost,
        ",".join(entitled),
        route,
        ledger_retention,
        USAGE_TTL_SECONDS,
        "shadow" if shadow else "charge",
        window,
        member,
        hold_seconds,
        settle_window,
        TOKEN_SECONDS,
        request.account if totals else "",
        *charge_varying(request, deadline, token),  # last: the hot path packs what comes before once
    ]


# The reasons by code: ``Reason(code)`` runs the enum's Python-level lookup on every refused request.
REASON_OF = {reason._value_: reason for reason in Reason}


def charge_reply(reply: Sequence[Any]) -> tuple[int, ChargeResult | StoreError]:
    """charge.lua's reply, read by name in the one order the script writes it (``answer`` there):
    Redis's clock in milliseconds, and the decision, or the error that a reason only the store sees
    stands for. Integers arrive as ints, strings as str."""
    (allowed, reason, plan, status, cost, balance, allowance, allowance_remaining, period_end, starts_at,
     expires_at, now, from_allowance, from_balance, charge_id, period_start, replayed, member_used,
     member_cap, debt, redis_ms) = reply  # fmt: skip
    if reason == "deadline_passed":
        return redis_ms, StoreTimeout("Redis ran the charge after the caller's deadline; nothing was charged")
    if reason == "store_empty":
        return redis_ms, StoreEmpty(STORE_EMPTY)
    # In the reply's order, which is ChargeResult's: built on every request, with tuple's own __new__.
    return redis_ms, _charge_result(
        (
            allowed == 1,
            (REASON_OF.get(reason) or Reason(reason)) if reason else None,  # Reason() refuses a stranger
            plan,
            status,
            cost,
            balance,
            allowance,
            allowance_remaining,
            period_end,
            starts_at,
            expires_at,
            now,
            from_allowance,
            from_balance,
            charge_id,
            period_start,
            replayed == 1,
            member_used,
            member_cap,
            debt,
        )
    )


def balance_reply(reply: Sequence[Any]) -> BalanceView:
    """balance.lua's fixed-shape reply, read by name."""
    (state, plan, status, balance, allowance, used, period, period_start, period_end, starts_at,
     expires_at, prepaid, now, member_used, member_cap, period_requests, period_from_balance,
     member_requests, debt, frozen, grace_until) = reply  # fmt: skip
    if as_text(state) == "store_empty":
        raise StoreEmpty(STORE_EMPTY)
    return BalanceView(
        plan=as_text(plan),
        status=as_text(status),
        balance=int(balance),
        allowance=int(allowance),
        allowance_used=int(used),
        period=as_text(period),
        period_start=int(period_start),
        period_end=int(period_end),
        starts_at=int(starts_at),
        expires_at=int(expires_at),
        prepaid=int(prepaid) == 1,
        now=int(now),
        member_used=int(member_used),
        member_cap=int(member_cap),
        period_requests=int(period_requests),
        period_from_balance=int(period_from_balance),
        member_requests=int(member_requests),
        debt=int(debt),
        frozen=int(frozen),
        grace_until=int(grace_until),
    )


def account_state_reply(account: str, reply: Any) -> AccountState:
    """Decode an account's hash (HGETALL's reply); a field that does not parse is StoreDataError."""
    try:
        raw = {as_text(k): as_text(v) for k, v in reply.items()}
    except UnicodeDecodeError:
        message = f"bad data in Redis: account '{account}' has a field that is not UTF-8"
        raise StoreDataError(message, key=account) from None

    def number(name: str) -> int:
        text = raw.get(name) or "0"
        if not re.fullmatch(r"-?[0-9]{1,19}", text):
            raise StoreDataError(
                f"bad data in Redis: account '{account}' field {name}: is not an integer", key=account
            )
        return int(text)

    return AccountState(
        account=account,
        plan=raw.get("plan", ""),
        status=raw.get("status", ""),
        starts_at=number("starts_at"),
        anchor=number("anchor"),
        expires_at=number("expires_at"),
        period=raw.get("period", Period.NONE.value),
        allowance=number("allowance"),
        prepaid=raw.get("prepaid") == "1",
        balance=number("balance"),
        used=number("used"),
        period_start=number("period_start"),
        period_end=number("period_end"),
        ledger_base=number("ledger_base"),
        exists=bool(raw),
        period_requests=number("period_requests"),
        period_from_balance=number("period_from_balance"),
        period_restarts=number("period_restarts"),
        debt=number("debt"),
        frozen=number("frozen"),
        grace_until=number("grace_until"),
    )


def ledger_entry_reply(account: str, entry: Any) -> LedgerEntry:
    """One XRANGE entry: its id and fields."""
    entry_id, fields = entry
    if isinstance(fields, list):
        # redis-py's ClusterPipeline in a transaction returns XRANGE's raw reply: fields as a flat
        # [name, value, ...] list rather than the dict the other clients make of it.
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    return LedgerEntry(account, as_text(entry_id), {as_text(k): as_text(v) for k, v in fields.items()})
