"""The Kong side of the gate: read who is calling, charge, and apply the decision.

Rules this module keeps, all from kong-pdk 0.36 and Kong's plugin-server protocol:

- The first thing a phase does is a PDK call. kong-pdk holds a server-wide lock from the start of an
  event until its first message, so an exception or a Redis round trip before that call would stall
  (or wedge) every other request on the server.
- Nothing escapes a phase. An exception in a handler leaves Kong waiting on the event, and Kong, when
  it gives up, proxies the request without the plugin: unpaid. Every failure becomes a deliberate
  answer (402, 401, 500, 503) or, with ``fault_tolerant``, a logged pass-through.
- ``kong.response.exit`` ends the event on Kong's side: no PDK call may follow it.
- Per request: one PDK call to learn the identity, one Redis script, then one or two PDK calls to set
  the headers (upstream, client) or one to refuse. Opt-in features add what they read: the method
  and path for cost rules, the Idempotency-Key header, the upstream for fail-closed routing.
- The log phase (refunds, settlements) runs only when the plugin server was started with
  ``--log-phase``; it acts only on what the access phase of the same request recorded in Kong's
  per-request context (``kong.ctx.shared``), which no client and no upstream can send or see. That
  record costs one PDK call (``kong.ctx.shared.set``) on a charged request, and only when the log
  phase is configured.
"""

from __future__ import annotations

import collections
import json
import math
import sys
import threading
import weakref
from collections.abc import Mapping
from typing import Any, NamedTuple

from creditgate import balance_route
from creditgate.core.config import AccountBy, GateConfig, RedisSettings, Role, parse_config
from creditgate.core.decision import (
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
from creditgate.core.pricing import parse_settled_cost
from creditgate.core.schema import PROBLEM_TYPE_BASE as DEFAULT_TYPE_BASE
from creditgate.errors import ConfigError, StoreDataError, StoreError
from creditgate.store.breaker import BreakerState, CircuitBreaker
from creditgate.store.keys import account_name
from creditgate.store.redis_store import RedisStore

StoreKey = tuple[RedisSettings, str, int, int]


class _StoreRegistry:
    """One Redis client (and its connection pool) per distinct Redis setting, shared by instances.

    Kong re-creates every plugin instance on any configuration change; sharing the pools keeps
    connections from churning each time. The store owns the circuit breaker, so every instance on
    one Redis sees the same circuit (instances with other breaker settings get a store of their own).

    A store lives as long as an instance uses it: each gate that takes one holds a claim, given back
    when kong-pdk drops the instance (CloseInstance, or its idle expiry), and the last claim closes the
    store's connections. Otherwise every change of a Redis setting (a password rotation, a timeout)
    would leave a live connection behind for the life of the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[StoreKey, RedisStore] = {}
        self._claims: dict[StoreKey, int] = {}
        self._released: collections.deque[StoreKey] = collections.deque()  # given back, not yet counted

    def get(self, config: GateConfig, owner: object) -> RedisStore:
        """The store for these settings, claimed until ``owner`` is garbage: kong-pdk keeps no other
        handle on an instance's end (its idle expiry drops instances without a call)."""
        key = (config.redis, config.key_prefix, config.breaker_failures, config.breaker_cooldown_ms)
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                breaker = CircuitBreaker(
                    config.breaker_failures, config.breaker_cooldown_ms, on_change=_breaker_changed
                )
                store = RedisStore.from_settings(config.redis, config.key_prefix, breaker=breaker)
                self._stores[key] = store
            self._claims[key] = self._claims.get(key, 0) + 1
            unused = self._count_released()
        weakref.finalize(owner, self._release, key)
        self._close(unused)
        return store

    def _release(self, key: StoreKey) -> None:
        """A finalizer: it runs inside the garbage collector, which may have interrupted this very
        thread (or greenlet) anywhere, ``get`` with the lock held included. So it only queues the
        claim, and counts the queue if the lock is free at once; ``get`` counts whatever is left.
        Waiting for the lock here would wait for ever."""
        self._released.append(key)
        if not self._lock.acquire(blocking=False):
            return
        try:
            unused = self._count_released()
        finally:
            self._lock.release()
        self._close(unused)

    def _count_released(self) -> list[RedisStore]:
        """The stores whose last claim was given back (called with the lock held)."""
        unused: list[RedisStore] = []
        while self._released:
            key = self._released.popleft()
            left = self._claims.get(key, 0) - 1
            if left > 0:
                self._claims[key] = left
                continue
            self._claims.pop(key, None)
            store = self._stores.pop(key, None)
            if store is not None:
                unused.append(store)
        return unused

    @staticmethod
    def _close(stores: list[RedisStore]) -> None:
        for store in stores:
            try:
                store.close()
            except Exception as error:  # never into kong-pdk: a failed close only leaks what it leaked
                _stderr(f"could not close a Redis store no instance uses: {type(error).__name__}: {error}")

    def open_stores(self) -> int:
        with self._lock:
            unused = self._count_released()
            count = len(self._stores)
        self._close(unused)
        return count


def _breaker_changed(old: BreakerState, new: BreakerState, why: str) -> None:
    # Said once per opening and once per closing, not per request and not per half-open probe.
    if new is BreakerState.CLOSED:
        NOTICES.forget("circuit:open")
        NOTICES.forget("circuit:closed")
        NOTICES.say("circuit:closed", "notice", f"Redis circuit {old.value} -> {new.value}: {why}")
    elif new is BreakerState.OPEN:
        NOTICES.say("circuit:open", "err", f"Redis circuit {old.value} -> {new.value}: {why}")
    else:
        _stderr(f"Redis circuit {old.value} -> {new.value}: {why}")


STORES = _StoreRegistry()


class Proxy(NamedTuple):
    """Let the request through with these headers."""

    upstream: dict[str, str]
    client: dict[str, str] | None
    route_to: str | None = None
    log: str | None = None
    log_level: str = "warn"
    charge: str | None = None  # recorded in kong.ctx.shared for the log phase


class Refuse(NamedTuple):
    """End the request with this problem."""

    problem: Problem
    log: str | None = None
    log_level: str = "err"


Action = Proxy | Refuse


class RequestFacts(NamedTuple):
    """What the access phase read from Kong: the identity always, the rest only when a feature needs it."""

    identity: Mapping[str, Any] | None
    method: str = ""
    path: str = ""
    idempotency_key: str | None = None


IDEMPOTENCY_HEADER = "Idempotency-Key"
# The field of Kong's consumer (or credential) entity that names the account.
ACCOUNT_FIELD = {
    AccountBy.CONSUMER_ID: "id",
    AccountBy.CONSUMER_USERNAME: "username",
    AccountBy.CONSUMER_CUSTOM_ID: "custom_id",
    AccountBy.CREDENTIAL_ID: "id",
}
# The key of kong.ctx.shared under which the access phase records the charge the log phase may settle.
# kong.ctx.shared lives as long as the request, and Kong hands the same table to the log timer
# (kong/runloop/plugin_servers/plugin.lua: ``ctx_shared = kong.ctx.shared`` in the data saved for
# later); only plugins the operator installed can write it. Nothing travels in a header: a header
# sent upstream is seen by an upstream that echoes requests, and a request header in the log phase
# is whatever the client sent.
CHARGE_CONTEXT_KEY = "credit-gate.charge"


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


def _stderr(message: str) -> None:
    # The plugin server's stderr is merged into Kong's error log by Kong's process manager, at INFO
    # (process.lua, raw_log(ngx_INFO, ...)): below Kong's default log_level, notice. What an operator
    # must act on goes through NOTICES as well.
    print(f"[credit-gate] {message}", file=sys.stderr, flush=True)


class _Notices:
    """What an operator must act on, said once per cause through Kong's own log at its own level.

    Lines the plugin server prints reach Kong's error log at INFO only, which Kong's default level
    (notice) drops. So each cause (an invalid configuration, the circuit opening or closing, a failed
    log phase) is queued once and written with ``kong.log.<level>`` by the next event of this process:
    one PDK call more for that one request, none while nothing is pending.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._said: set[str] = set()
        self._pending: list[tuple[str, str]] = []
        self.pending = False  # read without the lock on every request: a stale False only delays

    def say(self, cause: str, level: str, message: str) -> None:
        _stderr(message)
        with self._lock:
            if cause in self._said:
                return
            self._said.add(cause)
            self._pending.append((level, f"credit-gate: {message}"))
            self.pending = True

    def forget(self, cause: str) -> None:
        """Let the cause be said again (the circuit closed: its next opening is news)."""
        with self._lock:
            self._said.discard(cause)

    def flush(self, kong: Any) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self.pending = False
        for level, message in pending:
            getattr(kong.log, level)(message)


NOTICES = _Notices()


class Gate:
    """One plugin instance: its parsed config and its store. Never raises."""

    def __init__(self, raw_config: Mapping[str, Any], *, log_phase: bool = False) -> None:
        self.config: GateConfig | None = None
        self.config_error: str | None = None
        self.store: RedisStore | None = None
        try:
            self.config = parse_config(raw_config)
            if self.config.needs_log_phase and not log_phase:
                raise ConfigError(
                    "refund_on_failure and settle_header act after the response, in Kong's log phase: "
                    "run the plugin server with --log-phase (in both the start and the query command)"
                )
            self.store = STORES.get(self.config, self)
        except ConfigError as error:
            self.config_error = str(error)
        except Exception as error:  # a bug or an unusable setting: refuse, never pass
            self.config_error = f"{type(error).__name__}: {error}"
        # The balance role answers every request itself (balance_route.py); an invalid config is the gate's.
        self.balance_role = (
            self.store is not None and self.config is not None and self.config.role is Role.BALANCE
        )
        if self.config_error:
            NOTICES.say(
                f"config:{self.config_error}",
                "err",
                f"invalid configuration, every request through this instance is refused: {self.config_error}",
            )

    # The access phase

    def access(self, kong: Any) -> bool:
        """Decide and tell Kong. True when the request was ended here with ``kong.response.exit``."""
        if self.balance_role:
            return balance_route.balance_access(self, kong)
        facts: RequestFacts | Exception
        try:
            facts = self._read_request(kong)
        except Exception as error:
            facts = error
        try:
            action = self._decide(facts)
        except Exception as error:
            action = self._internal_error(error)
        return self._apply(kong, action)

    def _read_request(self, kong: Any) -> RequestFacts:
        """Read from Kong what the decision needs; the identity first, and only from Kong."""
        config = self.config
        by = config.account_by if config else AccountBy.CONSUMER_ID
        identity: Mapping[str, Any] | None
        if by is AccountBy.CREDENTIAL_ID:
            identity = kong.client.get_credential()
        else:
            identity = kong.client.get_consumer()
        if config is None or not identity:
            return RequestFacts(identity)
        pricing = config.pricing
        method = kong.request.get_method() if pricing.needs_method else ""
        path = kong.request.get_path() if pricing.needs_path else ""
        key = kong.request.get_header(IDEMPOTENCY_HEADER) if config.idempotency_window else None
        return RequestFacts(identity, method or "", path or "", key or None)

    # The decision: no PDK calls below this line until _apply.

    def _decide(self, facts: RequestFacts | Exception) -> Action:
        if isinstance(facts, Exception):
            return self._internal_error(facts)
        config = self.config
        if config is None or self.store is None:
            return Refuse(
                failure(
                    Reason.MISCONFIGURED,
                    "The gateway's billing configuration is invalid; the operator has been told.",
                    type_base=DEFAULT_TYPE_BASE,
                ),  # the cause is in Kong's log once (NOTICES), not once per request
            )
        identity = self._account(facts.identity, config.account_by)
        account = None if identity is None else account_name(config.account_namespace, identity)
        if account is None:
            return Refuse(
                failure(
                    Reason.UNAUTHENTICATED,
                    "This API needs an authenticated consumer; send your API credentials.",
                    type_base=config.problem_type_base,
                )
            )
        payer, member = (account, "")
        if config.pool_tag_prefix:
            payer, member = self._payer(facts.identity, account, config.pool_tag_prefix)
        pricing = config.pricing
        cost = pricing.cost_of(facts.method, facts.path) if pricing.rules else pricing.cost
        try:
            result = self.store.charge(
                payer,
                cost,
                entitled=config.plans,
                route=config.route,
                ledger_retention=config.ledger_retention,
                shadow=not config.enforce,
                idempotency_key=facts.idempotency_key,
                idempotency_window=config.idempotency_window,
                member=member,
                hold_seconds=config.settle_timeout if config.settle_header else 0,
                settle_window=max(config.settle_timeout, 86_400) if config.needs_log_phase else 0,
            )
        except StoreDataError as error:  # Redis is up, the data is wrong: refused, fault_tolerant or not
            return Refuse(
                failure(
                    Reason.ACCOUNT_DATA_INVALID,
                    "The account's billing data is invalid, so the request was not processed; "
                    "the operator has been told.",
                    type_base=config.problem_type_base,
                ),
                log=f"credit-gate: account '{payer}' refused with 500, {error}",
            )
        except StoreError as error:
            return self._store_failure(config, payer, member, error)
        if not config.enforce:
            return self._shadow(config, payer, member, result)
        return self._act(config, payer, member, result)

    @staticmethod
    def _account(identity: Mapping[str, Any] | None, by: AccountBy) -> str | None:
        if not identity or (type(identity) is not dict and not isinstance(identity, Mapping)):
            return None  # (Kong's entity arrives as a dict: the exact check spares the ABC's)
        value = identity.get(ACCOUNT_FIELD[by])
        return value if isinstance(value, str) and value else None

    @staticmethod
    def _payer(identity: Mapping[str, Any] | None, account: str, prefix: str) -> tuple[str, str]:
        """The account that pays and the pool member, from the tags Kong has on the consumer or credential.

        A consumer tagged ``<prefix><pool>`` draws from the pool's account; no Redis lookup needed.
        """
        if identity:
            for tag in identity.get("tags") or ():
                if isinstance(tag, str) and tag.startswith(prefix) and len(tag) > len(prefix):
                    return tag[len(prefix) :], account
        return account, ""

    def _act(self, config: GateConfig, payer: str, member: str, result: ChargeResult) -> Action:
        if result.allowed:
            upstream = upstream_headers(payer, result, member)
            charge = None
            if config.needs_log_phase and result.charge_id and not result.replayed:
                charge = charge_record(payer, result.charge_id, result.cost)
            client = {} if config.hide_client_headers else client_headers(result)
            if config.warnings.enabled:
                client.update(warning_headers(result, config.warnings))
            if config.rate_limit_headers:
                client.update(rate_limit_headers(result))
            return Proxy(upstream=upstream, client=client or None, route_to=config.upstream, charge=charge)
        problem = refusal(
            result,
            type_base=config.problem_type_base,
            payment_url=config.payment_url,
            entitled=config.plans,
        )
        if config.rate_limit_headers:
            problem.headers.update(rate_limit_headers(result))
        return Refuse(problem)

    def _shadow(self, config: GateConfig, payer: str, member: str, result: ChargeResult) -> Action:
        """Shadow mode: say what would have happened, refuse and charge nothing."""
        log = None
        if not result.allowed:
            assert result.reason is not None
            log = f"credit-gate shadow: would refuse account '{payer}' with {result.reason.value}"
        return Proxy(
            upstream=upstream_headers(payer, None, member),
            client=shadow_headers(result),
            route_to=config.upstream,
            log=log,
            log_level="notice",
        )

    def _store_failure(self, config: GateConfig, payer: str, member: str, error: StoreError) -> Action:
        if config.fault_tolerant or not config.enforce:
            return Proxy(
                upstream=upstream_headers(payer, None, member),
                client=None,
                route_to=config.upstream,
                log=f"credit-gate: store unavailable, request proxied UNMETERED: {error}",
            )
        return Refuse(
            failure(
                Reason.STORE_UNAVAILABLE,
                "Billing is temporarily unavailable, so the request was not processed. Retry shortly.",
                type_base=config.problem_type_base,
                # While the breaker cools down, retrying sooner only meets another 503.
                retry_after_seconds=max(1, math.ceil(error.retry_after_ms / 1000)),
            ),
            log=f"credit-gate: store unavailable, request refused with 503: {error}",
        )

    def _internal_error(self, error: BaseException) -> Refuse:
        type_base = self.config.problem_type_base if self.config else DEFAULT_TYPE_BASE
        return Refuse(
            failure(
                Reason.INTERNAL_ERROR,
                "The gateway could not process the request's billing; nothing was charged.",
                type_base=type_base,
            ),
            log=f"credit-gate: internal error, request refused with 500: {type(error).__name__}: {error}",
        )

    # Applying the decision: the last PDK calls of the event.

    @staticmethod
    def _apply(kong: Any, action: Action) -> bool:
        ending = isinstance(action, Refuse)  # once exit is tried, never end the event another way
        try:
            if NOTICES.pending:
                NOTICES.flush(kong)
            if action.log:
                getattr(kong.log, action.log_level)(action.log)
            if isinstance(action, Refuse):
                problem = action.problem
                kong.response.exit(problem.status, problem.encoded(), problem.headers)
                return True  # Kong sends nothing more for this event after exit.
            if action.route_to:
                # Fail-closed deployments: only an allowed request is sent to the paid upstream.
                kong.service.set_upstream(action.route_to)
            kong.service.request.set_headers(action.upstream)
            if action.charge:
                kong.ctx.shared.set(CHARGE_CONTEXT_KEY, action.charge)
            if action.client:
                kong.response.set_headers(action.client)
        except Exception as error:  # the channel to Kong itself failed: nothing more can be sent
            _stderr(f"could not apply the decision: {type(error).__name__}: {error}")
        return ending

    # The log phase: refunds and settlements, after the response.

    def log(self, kong: Any) -> None:
        config = self.config
        if config is None or self.store is None or not config.needs_log_phase:
            return  # nothing to do: the event ends without a PDK call
        try:
            self._settle(kong, config, self.store)
        except Exception as error:
            NOTICES.say(
                f"log:{type(error).__name__}",
                "err",
                f"log phase failed, the charge stands: {type(error).__name__}: {error}",
            )

    def _settle(self, kong: Any, config: GateConfig, store: RedisStore) -> None:
        record = kong.ctx.shared.get(CHARGE_CONTEXT_KEY)
        if record is None:
            return  # this request charged nothing: refused, replayed, free or unmetered
        charge = read_charge_record(record)
        if charge is None:
            kong.log.warn(f"credit-gate: {CHARGE_CONTEXT_KEY} in kong.ctx.shared is not a charge record")
            return
        account, charge_id, held = charge
        status = kong.response.get_status()
        if config.refund is not None and config.refund.refunds(status):
            final, refund, note = 0, True, None
        elif config.settle_header:
            raw = kong.response.get_header(config.settle_header)
            final, problem = parse_settled_cost(raw, held)
            refund, note = (
                False,
                (
                    f"settle header {config.settle_header}: {problem}; settled at the hold"
                    if problem
                    else None
                ),
            )
        else:
            return
        if note:
            kong.log.warn(f"credit-gate: {note}")
        if final == held:
            return  # nothing to give back
        try:
            outcome = store.settle(
                account,
                charge_id,
                final,
                refund=refund,
                window_seconds=max(config.settle_timeout, 86_400) if refund else config.settle_timeout,
                ledger_retention=config.ledger_retention,
            )
        except StoreError as error:
            kong.log.err(f"credit-gate: could not settle charge {charge_id} of '{account}': {error}")
            return
        if outcome.outcome != "applied":
            kong.log.warn(f"credit-gate: charge {charge_id} of '{account}' not settled: {outcome.outcome}")
