"""The Kong side of the gate: read who is calling, charge, and apply the decision.

The decision is the core's (``core/policy.py``: who pays, what is charged, shadow mode, the failure
policy, the headers, what the log phase gives back); this module reads the request from Kong, makes
the one store call, and tells Kong the answer.

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
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from creditgate.core import policy
from creditgate.core.config import AccountBy, GateConfig, RedisSettings, Role, parse_config
from creditgate.core.policy import IDEMPOTENCY_HEADER, Action, Refuse, RequestFacts
from creditgate.errors import ConfigError, StoreError
from creditgate.kong import balance as balance_route
from creditgate.kong import node_report
from creditgate.kong.node_report import NodeReporter
from creditgate.store.breaker import BreakerState, CircuitBreaker
from creditgate.store.store import RedisStore

StoreKey = tuple[RedisSettings, str, int, int, Callable[[], float]]


class _StoreRegistry:
    """One Redis client (and its connection pool) per distinct Redis setting, shared by instances.

    Kong re-creates every plugin instance on any configuration change; sharing the pools keeps
    connections from churning each time. The store owns the circuit breaker, so every instance on
    one Redis sees the same circuit (instances with other breaker settings get a store of their own).

    A store lives as long as an instance uses it: each gate that takes one holds a claim, given back
    when kong-pdk drops the instance (CloseInstance, or its idle expiry), and the last claim closes the
    store's connections. Otherwise every change of a Redis setting (a password rotation, a timeout)
    would leave a live connection behind for the life of the process.

    ``breaker_clock`` is the circuit breaker's clock (seconds, monotonic): Kong's instances all share
    the default; a test that moves a clock of its own gets a store of its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[StoreKey, RedisStore] = {}
        self._claims: dict[StoreKey, int] = {}
        self._released: collections.deque[StoreKey] = collections.deque()  # given back, not yet counted

    def get(
        self, config: GateConfig, owner: object, breaker_clock: Callable[[], float] = time.monotonic
    ) -> RedisStore:
        """The store for these settings, claimed until ``owner`` is garbage: kong-pdk keeps no other
        handle on an instance's end (its idle expiry drops instances without a call)."""
        key = (
            config.redis,
            config.key_prefix,
            config.breaker_failures,
            config.breaker_cooldown_ms,
            breaker_clock,
        )
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                breaker = CircuitBreaker(
                    config.breaker_failures,
                    config.breaker_cooldown_ms,
                    clock=breaker_clock,
                    on_change=_breaker_changed,
                )
                store = RedisStore.from_settings(config.redis, config.key_prefix, breaker=breaker)
                store.reporter = NodeReporter(store, node_report.interval_from_env())
                store.reporter.start()  # stopped by store.close()
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


# The key of kong.ctx.shared under which the access phase records the charge the log phase may settle.
# kong.ctx.shared lives as long as the request, and Kong hands the same table to the log timer
# (kong/runloop/plugin_servers/plugin.lua: ``ctx_shared = kong.ctx.shared`` in the data saved for
# later); only plugins the operator installed can write it. Nothing travels in a header: a header
# sent upstream is seen by an upstream that echoes requests, and a request header in the log phase
# is whatever the client sent.
CHARGE_CONTEXT_KEY = "credit-gate.charge"


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
    """One plugin instance: its parsed config and its store. Never raises.

    ``clock`` (Unix seconds) decides the charges' and settlements' time instead of Redis's own clock:
    for tests, which then need not wait on the wall clock. Kong's instances never get one, so that
    one clock, Redis's, decides for every gateway node. ``breaker_clock`` (seconds, monotonic) times
    the circuit breaker's cool-down, so that tests move it instead of sleeping through one.
    """

    def __init__(
        self,
        raw_config: Mapping[str, Any],
        *,
        log_phase: bool = False,
        clock: Callable[[], float] | None = None,
        breaker_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
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
            self.store = STORES.get(self.config, self, breaker_clock)
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
            action = policy.internal_error(self.config, error)
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
        """The core's policy around the one store call."""
        if isinstance(facts, Exception):
            return policy.internal_error(self.config, facts)
        config, store = self.config, self.store
        if config is None or store is None:
            return policy.misconfigured()
        request = policy.charge_request(config, facts, None if self.clock is None else int(self.clock()))
        if request is None:
            return policy.unauthenticated(config)
        try:
            result = store.charge(request)
        except StoreError as error:
            return policy.store_failed(config, request, error)
        return policy.decided(config, request, result)

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
        charge = policy.read_charge_record(record)
        if charge is None:
            kong.log.warn(f"credit-gate: {CHARGE_CONTEXT_KEY} in kong.ctx.shared is not a charge record")
            return
        account, charge_id, held = charge
        refund = policy.refunds(config, kong.response.get_status())
        if not refund and not config.settle_header:
            return
        reported = None if refund else kong.response.get_header(config.settle_header)
        settlement = policy.settlement(config, held, refund=refund, reported=reported)
        if settlement.note:
            kong.log.warn(f"credit-gate: {settlement.note}")
        if settlement.final == held:
            return  # nothing to give back
        try:
            outcome = store.settle(
                account,
                charge_id,
                settlement.final,
                refund=settlement.refund,
                now=None if self.clock is None else int(self.clock()),
                window_seconds=settlement.window_seconds,
                ledger_retention=config.ledger_retention,
            )
        except StoreError as error:
            kong.log.err(f"credit-gate: could not settle charge {charge_id} of '{account}': {error}")
            return
        if outcome.outcome != "applied":
            kong.log.warn(f"credit-gate: charge {charge_id} of '{account}' not settled: {outcome.outcome}")
