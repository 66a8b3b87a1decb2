"""The request policy: from what Kong said about a request to what the gate does with it.

The Kong adapter (``kong/gate.py``) reads the request into ``RequestFacts``, asks ``charge_request``
who pays and how (None: no one, ``unauthenticated``), sends the ``ChargeRequest`` to the store (one
script), and applies the ``Action`` that ``decided`` (or ``store_failed``) returns; in the log phase
it asks ``settlement`` what to give back. Who pays (consumer, credential, pool tags), what shadow
mode and ``fault_tolerant`` do, which headers go upstream and which to the client, and the refund
window are decided here, in plain functions over plain values, as Kong's own handlers hand each
phase to a module (kong/plugins/basic-auth/handler.lua: ``access.execute(conf)``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple, cast

from creditgate.core.config import ACCOUNT_FIELD, AccountBy, GateConfig
from creditgate.core.decision import (
    SHADOW_HEADER,
    ChargeResult,
    Problem,
    Reason,
    client_headers,
    failure,
    rate_limit_headers,
    refusal,
    shadow_headers,
    upstream_headers,
    warning_headers,
)
from creditgate.core.model import account_name
from creditgate.core.pricing import MAX_PATH_LENGTH, parse_settled_cost
from creditgate.errors import StoreDataError, StoreError

# The config's own defaults, for the answers given without a config (an invalid one) and for a charge
# asked for without one (operators' tools, tests).
DEFAULT_TYPE_BASE = GateConfig.problem_type_base
DEFAULT_LEDGER_RETENTION = GateConfig.ledger_retention

IDEMPOTENCY_HEADER = "Idempotency-Key"


class RequestFacts(NamedTuple):
    """What the access phase read from Kong: the identity always, the rest only when a feature needs it."""

    identity: Mapping[str, Any] | None
    method: str = ""
    path: str = ""
    idempotency_key: str | None = None


class ChargeRequest(NamedTuple):
    """One charge, as the charge script takes it (charge.lua's ARGV): the store encodes it, once.

    ``now`` None: Redis's own clock decides (the gate), so that every gateway node sees the same
    periods; a given ``now`` (operators' tools, tests) overrides it. ``member`` is the pool member
    ("" when the account pays for itself). ``hold_seconds`` > 0 lets the charge be settled to a lower
    cost within that time; ``settle_window`` > 0 keeps what settling or refunding it needs that long.

    A named tuple rather than a frozen dataclass: immutable as well, and built on every request for
    half the cost.
    """

    account: str
    cost: int
    now: int | None = None
    entitled: Sequence[str] = ()
    route: str = "global"
    ledger_retention: int = DEFAULT_LEDGER_RETENTION
    shadow: bool = False
    idempotency_key: str | None = None
    idempotency_window: int = 0
    member: str = ""
    hold_seconds: int = 0
    settle_window: int = 0
    token: str = ""  # names the charge (hex, 16 digits); "" lets the store draw one
    request_id: str = ""  # Kong's id of the request (bypass_witness): the same request charges once


class Proxy(NamedTuple):
    """Let the request through with these headers."""

    upstream: dict[str, str]
    client: dict[str, str] | None
    route_to: str | None = None
    log: str | None = None
    log_level: str = "warn"
    charge: str | None = None  # recorded in kong.ctx.shared for the log phase


class Respond(NamedTuple):
    """End the request with this answer (``kong.response.exit``): a refusal, or the balance role's 200."""

    problem: Problem
    log: str | None = None
    log_level: str = "err"
    encoded: str | None = None  # the problem's body as JSON, when built already


Action = Proxy | Respond

# A named tuple's own __new__ is a Python function (collections.namedtuple writes one). What the gate
# builds on every request (the charge asked for, the allowed request's answer) is built from all its
# fields in order with tuple's own, at half the cost.
_charge_request = cast(Callable[[tuple[Any, ...]], ChargeRequest], partial(tuple.__new__, ChargeRequest))
_proxy = cast(Callable[[tuple[Any, ...]], Proxy], partial(tuple.__new__, Proxy))
request_facts = cast(Callable[[tuple[Any, ...]], RequestFacts], partial(tuple.__new__, RequestFacts))


# Who pays


def account_of(identity: Mapping[str, Any] | None, by: AccountBy | str) -> str | None:
    """The name Kong's consumer (or credential) gives the account, or None when it gives none. ``by``
    is the config's ``account_by`` or the entity's field it names (``GateConfig.identity_field``)."""
    if not identity or (type(identity) is not dict and not isinstance(identity, Mapping)):
        return None  # (Kong's entity arrives as a dict: the exact check spares the ABC's)
    value = identity.get(by if type(by) is str else ACCOUNT_FIELD[AccountBy(by)])
    return value if isinstance(value, str) and value else None


def payer_of(identity: Mapping[str, Any] | None, account: str, prefix: str) -> tuple[str, str]:
    """The account that pays and the pool member, from the tags Kong has on the consumer or credential.

    A consumer tagged ``<prefix><pool>`` draws from the pool's account; no Redis lookup needed.
    """
    if identity:
        for tag in identity.get("tags") or ():
            if isinstance(tag, str) and tag.startswith(prefix) and len(tag) > len(prefix):
                return tag[len(prefix) :], account
    return account, ""


def unauthenticated(config: GateConfig) -> Respond:
    """The answer to a request no account pays for: Kong authenticated no one (or no one by the name
    the config asks for)."""
    return Respond(
        failure(
            Reason.UNAUTHENTICATED,
            "This API needs an authenticated consumer; send your API credentials.",
            type_base=config.problem_type_base,
        )
    )


def who_pays(config: GateConfig, identity: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(the account that pays, the pool member asking or ""), or None when Kong authenticated no one
    by the name the config asks for. The gate and the balance role both ask this."""
    name = account_of(identity, config.identity_field)
    if name is None:
        return None
    payer, member = account_name(config.account_namespace, name), ""
    if config.pool_tag_prefix:
        payer, member = payer_of(identity, payer, config.pool_tag_prefix)
    return payer, member


def charge_request(
    config: GateConfig, facts: RequestFacts, now: int | None = None
) -> ChargeRequest | Action | None:
    """What to charge for this request; None when no account can pay for it (``unauthenticated``);
    the answer itself when the cost rules cannot price it (``unpriced``). ``now`` None: Redis's clock
    decides."""
    paying = who_pays(config, facts.identity)
    if paying is None:
        return None
    payer, member = paying
    pricing = config.pricing
    cost = pricing.cost_of(facts.method, facts.path) if pricing.rules else pricing.cost
    if cost is None:
        return unpriced(config, payer, member, len(facts.path))
    plans, route, retention, shadow, window, hold, settle_window = config.charge_terms
    return _charge_request(
        (
            payer,
            cost,
            now,
            plans,
            route,
            retention,
            shadow,
            facts.idempotency_key,
            window,
            member,
            hold,
            settle_window,
            "",  # the token: the store draws one, or the gate with bypass_witness (kong/gate.py)
            "",  # Kong's request id: the gate's, with bypass_witness
        )
    )  # ChargeRequest's fields, in its order


def unpriced(config: GateConfig, account: str, member: str, length: int) -> Action:
    """A path longer than the cost rules consider (``MAX_PATH_LENGTH``): no rule can price it, and the
    flat cost could be less than a rule would have charged, so it is refused with 414, nothing charged.
    Shadow mode refuses nothing: it proxies the request and says what would have happened."""
    if not config.enforce:
        return Proxy(
            upstream=upstream_headers(account, None, member),
            client={SHADOW_HEADER: f"would_refuse; reason={Reason.PATH_TOO_LONG.value}"},
            route_to=config.upstream,
            log=f"credit-gate shadow: would refuse account '{account}' with {Reason.PATH_TOO_LONG.value}",
            log_level="notice",
        )
    return Respond(
        failure(
            Reason.PATH_TOO_LONG,
            f"The request path is {length} characters long; this API prices paths of at most "
            f"{MAX_PATH_LENGTH} characters. Nothing was charged.",
            type_base=config.problem_type_base,
        )
    )


# What the charge's answer means for the request


def decided(config: GateConfig, request: ChargeRequest, result: ChargeResult) -> Action:
    """The answer to a request the store decided: shadow mode's, or the enforcing gate's."""
    if not config.enforce:
        return shadowed(config, request, result)
    if result.allowed:
        charge = None
        if config.needs_log_phase and result.charge_id and not result.replayed:
            charge = charge_record(request.account, result.charge_id, result.cost)
        client = {} if config.hide_client_headers else client_headers(result)
        if config.warnings.enabled:
            client.update(warning_headers(result, config.warnings))
        if config.rate_limit_headers:
            client.update(rate_limit_headers(result))
        # Proxy's fields in order: upstream, client, route_to, log, log_level, charge.
        return _proxy(
            (
                upstream_headers(request.account, result, request.member),
                client or None,
                config.upstream,
                None,
                "warn",
                charge,
            )
        )
    return refused(config, result)


# Refusals kept per config (GateConfig.refusals), after which the cache starts again.
REFUSALS_KEPT = 1024


def refused(config: GateConfig, result: ChargeResult) -> Respond:
    """The enforcing gate's answer to a refused charge, its body encoded. The answer is a function of
    the config and the result alone (the result carries Redis's second): a client refused again in the
    same state (an empty account retrying in a loop, the refusal hammered) gets it built once. Kept
    answers are shared: nothing changes an answer once built."""
    kept = config.refusals
    answer: Respond | None = kept.get(result)
    if answer is None:
        problem = refusal(
            result,
            type_base=config.problem_type_base,
            payment_url=config.payment_url,
            entitled=config.plans,
        )
        if config.rate_limit_headers:
            problem.headers.update(rate_limit_headers(result))
        answer = Respond(problem, encoded=problem.encoded())
        if len(kept) >= REFUSALS_KEPT:
            kept.clear()
        kept[result] = answer
    return answer


def shadowed(config: GateConfig, request: ChargeRequest, result: ChargeResult) -> Proxy:
    """Shadow mode: say what would have happened, refuse and charge nothing."""
    log = None
    if not result.allowed:
        assert result.reason is not None
        log = f"credit-gate shadow: would refuse account '{request.account}' with {result.reason.value}"
    return Proxy(
        upstream=upstream_headers(request.account, None, request.member),
        client=shadow_headers(result),
        route_to=config.upstream,
        log=log,
        log_level="notice",
    )


def store_failed(config: GateConfig, request: ChargeRequest, error: StoreError) -> Action:
    """The failure policy: bad data is refused with 500 whatever ``fault_tolerant`` says (Redis is up,
    the data is wrong); an outage is a 503, or an unmetered pass-through with ``fault_tolerant`` or in
    shadow mode."""
    if isinstance(error, StoreDataError):
        refused = f"credit-gate: account '{request.account}' refused with 500, {error}"
        return data_invalid(config, "the request was not processed", refused)
    if config.fault_tolerant or not config.enforce:
        return Proxy(
            upstream=upstream_headers(request.account, None, request.member),
            client=None,
            route_to=config.upstream,
            log=f"credit-gate: store unavailable, request proxied UNMETERED: {error}",
        )
    log = f"credit-gate: store unavailable, request refused with 503: {error}"
    return unavailable(config, error, "the request was not processed", log)


def data_invalid(config: GateConfig, not_done: str, log: str) -> Respond:
    """500 ``account_data_invalid``: Redis answered, the account's data is wrong (``not_done`` says what
    the answer could not do)."""
    return Respond(
        failure(
            Reason.ACCOUNT_DATA_INVALID,
            f"The account's billing data is invalid, so {not_done}; the operator has been told.",
            type_base=config.problem_type_base,
        ),
        log=log,
    )


def unavailable(config: GateConfig, error: StoreError, not_done: str, log: str) -> Respond:
    """503 ``store_unavailable``, with a Retry-After of the breaker's cool-down (at least 1 s): while
    it cools down, retrying sooner only meets another 503."""
    return Respond(
        failure(
            Reason.STORE_UNAVAILABLE,
            f"Billing is temporarily unavailable, so {not_done}. Retry shortly.",
            type_base=config.problem_type_base,
            retry_after_seconds=max(1, math.ceil(error.retry_after_ms / 1000)),
        ),
        log=log,
    )


def misconfigured() -> Respond:
    """Every request through an instance whose config is invalid: the cause is in Kong's log once, not
    in each answer."""
    return Respond(
        failure(
            Reason.MISCONFIGURED,
            "The gateway's billing configuration is invalid; the operator has been told.",
            type_base=DEFAULT_TYPE_BASE,
        ),
    )


def internal_error(config: GateConfig | None, error: BaseException) -> Respond:
    """A bug, or a Kong answer nothing expected: refused with 500, nothing charged."""
    return Respond(
        failure(
            Reason.INTERNAL_ERROR,
            "The gateway could not process the request's billing; nothing was charged.",
            type_base=config.problem_type_base if config else DEFAULT_TYPE_BASE,
        ),
        log=f"credit-gate: internal error, request refused with 500: {type(error).__name__}: {error}",
    )


# The log phase


def charge_record(account: str, charge_id: str, cost: int) -> str:
    """What the access phase records of a charge: a JSON text (the context holds Lua values)."""
    return json.dumps([account, charge_id, cost], separators=(",", ":"))


def read_charge_record(record: object) -> tuple[str, str, int] | None:
    """The (account, charge id, cost) of a record, or None when there is none or it is not one of ours."""
    if not isinstance(record, str):
        return None
    try:
        value = json.loads(record)
    except ValueError:
        return None
    if not (isinstance(value, list) and len(value) == 3):
        return None
    account, charge_id, cost = value
    if not (isinstance(account, str) and isinstance(charge_id, str) and type(cost) is int and cost >= 0):
        return None
    return account, charge_id, cost


class Settlement(NamedTuple):
    """What the log phase does with a charge: lower it to ``final`` (0 and ``refund``: give it all back)
    within ``window_seconds`` of the charge; ``note`` is logged when the upstream's report was unusable."""

    final: int
    refund: bool
    window_seconds: int
    note: str | None = None


def refunds(config: GateConfig, status: int | None) -> bool:
    """Whether a response with this status gives the whole charge back."""
    return config.refund is not None and config.refund.refunds(status)


def settlement(config: GateConfig, held: int, *, refund: bool, reported: object = None) -> Settlement:
    """A refund (``refund``), or the hold settled to the cost the upstream ``reported`` in the
    settle header; a missing or bad report settles at the hold."""
    if refund:
        return Settlement(0, True, config.refund_window)
    final, problem = parse_settled_cost(reported, held)
    note = f"settle header {config.settle_header}: {problem}; settled at the hold" if problem else None
    return Settlement(final, False, config.settle_timeout, note)
