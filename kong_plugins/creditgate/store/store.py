"""The Redis store: every read and write of credit-gate's data, each write one Lua script.

The store knows keys, scripts and replies (built and decoded in replies.py); it decides nothing (the
scripts keep the money rules, the core explains them). Commands are never re-sent by the client:
redis-py retries timeouts and connection errors by default, and a re-sent charge whose first reply was
lost would be applied twice.
A failed call raises ``StoreError`` and its outcome is unknown; the ledger tells what happened.

``RedisStore.from_settings`` builds the client for the configured topology (``store/topology/``: one
module each for standalone, TLS, Sentinel and Cluster); the store runs unchanged on all of them, since
every script's keys share one account's hash tag. An optional ``CircuitBreaker`` makes the store fail
at once while Redis is down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cached_property, partial
from importlib import resources
from os import urandom
from typing import Any, TypeVar, cast

import redis
from redis.commands.core import Script

from creditgate.core.balance import BalanceView
from creditgate.core.config import RedisSettings
from creditgate.core.decision import ChargeResult
from creditgate.core.model import Plan, Status, Subscription
from creditgate.core.policy import ChargeRequest
from creditgate.core.schema import default
from creditgate.errors import (
    BalanceCapReached,
    IdempotencyKeyReused,
    InsufficientBalance,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from creditgate.store import nodes, topology
from creditgate.store.breaker import CircuitBreaker
from creditgate.store.clock import RedisClock
from creditgate.store.hot_path import HotPath
from creditgate.store.keys import Keys, account_keys, day_name, totals_meta
from creditgate.store.nodes import RedisErrors, Reporter
from creditgate.store.plan_index import PlanIndex
from creditgate.store.replies import (
    USAGE_TTL_SECONDS,
    AccountState,
    CreditResult,
    ImportOutcome,
    LedgerEntry,
    SettleResult,
    account_state_reply,
    as_text,
    balance_reply,
    charge_arguments,
    charge_cache_key,
    charge_reply,
    charge_time,
    charge_varying,
    data_error,
    import_terms,
    ledger_entry_reply,
    refusal,
    write_fault,
)
from creditgate.store.totals import totals_start
from creditgate.store.voids import Voider, maybe_sent

T = TypeVar("T")

DEFAULT_LEDGER_RETENTION: int = default("ledger_retention")
DEFAULT_PREFIX: str = default("key_prefix")

# Errors that mean "Redis could not be reached or did not answer in time", as opposed to an error
# reply (Redis is up). These and the write faults (replies.py's WRITE_FAULTS: Redis is up but refuses
# writes) count towards the circuit breaker; other error replies do not. RedisClusterException is not a
# RedisError: redis-py raises it when no seed node answers and when a slot has no node.
UNREACHABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # also AuthenticationError, BusyLoadingError, MasterNotFoundError
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.RedisClusterException,
    OSError,
)


def _script_source(name: str) -> str:
    lua = resources.files("creditgate.store") / "lua"
    return (lua / "_lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class RedisStore:
    """credit-gate's data in one Redis (or Redis Cluster) database, under one key prefix.

    ``timeout_ms`` is the client's read timeout: charges sent with it carry a deadline a little
    shorter, so that a charge Redis runs after the caller stopped waiting is never applied.

    ``breaker``, when given, is asked before every call and told how it went: while it is open the
    store raises ``StoreUnavailable`` at once instead of waiting on an unreachable Redis.

    ``hot_path``, when given, carries the charge script instead of the client (the topology builds it
    where it serves, see ``Topology.hot_path``); every other command goes through the client.
    """

    def __init__(
        self,
        client: topology.Client,
        prefix: str = DEFAULT_PREFIX,
        *,
        timeout_ms: int = 0,
        breaker: CircuitBreaker | None = None,
        hot_path: HotPath | None = None,
    ) -> None:
        self.client = client
        # What spans more than one account's keys: the store marker, scripts, the clock (topology/).
        self.keyspace = topology.keyspace_of(client)
        self._totals_noted = False
        self.breaker = breaker
        self.redis_errors = RedisErrors()  # counted where a call failed, published by the reporter
        self.reporter: Reporter | None = None
        # The charge's own transport when the topology has one (see hot_path.py), else the client.
        self.hot_path = hot_path
        self.keys = Keys(prefix)
        self._totals = partial(self.keyspace.totals_prefix, self.keys)  # where an account's day's totals are
        self._account_keys = partial(account_keys, prefix)  # the charge's: no Python call when cached
        self.clock = RedisClock()
        self.voider = Voider(self, client.register_script(_script_source("void")))  # replies never received
        # Leave the reply time to travel back before the client's own timeout fires.
        self.charge_budget_ms = timeout_ms - max(timeout_ms / 5, 5) if timeout_ms else 0
        self._charge = client.register_script(_script_source("charge"))
        self._settle = client.register_script(_script_source("settle"))
        self._credit = client.register_script(_script_source("credit"))
        self._subscribe = client.register_script(_script_source("subscribe"))
        self._plan_terms = client.register_script(_script_source("plan_terms"))
        self._set_status = client.register_script(_script_source("set_status"))
        self._change_plan = client.register_script(_script_source("change_plan"))
        self._import_row = client.register_script(_script_source("import_row"))
        self._plan_index = PlanIndex(
            self.keys, self.keyspace.plan_index_in_scripts, self._run, self._pipeline
        )

    @classmethod
    def from_settings(
        cls, settings: RedisSettings, prefix: str = DEFAULT_PREFIX, *, breaker: CircuitBreaker | None = None
    ) -> RedisStore:
        chosen = topology.topology_for(settings)
        client = chosen.client()
        hot_path = chosen.hot_path(client, _script_source("charge"))
        return cls(client, prefix, timeout_ms=settings.read_timeout, breaker=breaker, hot_path=hot_path)

    def close(self) -> None:
        if self.reporter is not None:
            self.reporter.stop()
        if self.hot_path is not None:
            self.hot_path.close()
        self.client.close()

    def _guarded(self, call: Callable[..., T], *args: Any) -> T:
        """Every call to Redis: the breaker's say first, and driver errors as StoreError."""
        breaker = self.breaker
        if breaker is not None and not breaker.calm and not breaker.allow():
            raise self._circuit_open(breaker)
        try:
            result = call(*args)
        except BaseException as error:
            failure = self._failure(error)
            if failure is error:
                raise
            raise failure from error
        if breaker is not None and not breaker.calm:
            breaker.succeeded()
        return result

    @staticmethod
    def _circuit_open(breaker: CircuitBreaker) -> StoreUnavailable:
        left = breaker.retry_after_ms()
        return StoreUnavailable(
            f"circuit open after repeated Redis failures; Redis is tried again in {left} ms",
            retry_after_ms=left,
        )

    def _failure(self, error: BaseException) -> BaseException:
        """What a failed call raises, the breaker told: StoreError for the driver's errors."""
        breaker = self.breaker
        code = write_fault(error)  # before UNREACHABLE: LOADING and MASTERDOWN are among its classes
        if code is not None:
            self.redis_errors.count(error)
            if breaker is not None:
                breaker.failed()
            if code == "READONLY":
                self._drop_connections()
            return refusal(error, code)
        if isinstance(error, UNREACHABLE):
            self.redis_errors.count(error)
            if breaker is not None:
                breaker.failed()
            if isinstance(error, redis.exceptions.TimeoutError):
                return StoreTimeout(f"Redis did not answer in time: {error}")
            return StoreError(f"Redis failed: {error}")
        if breaker is not None:
            breaker.succeeded()  # an error reply (Redis is up), or not Redis's fault: never leave a probe out
        bad_data = data_error(error)
        if bad_data is not None:
            return bad_data
        if isinstance(error, redis.exceptions.RedisError):
            return StoreError(f"Redis failed: {error}")
        return error  # not Redis's: raised as it is

    def _drop_connections(self) -> None:
        """After READONLY (a failover demoted the node): the next command connects again, to where the
        address leads now. Connections in use finish their commands: closing them would lose replies."""
        if self.hot_path is not None:
            self.hot_path.drop_connections()
        pool = getattr(self.client, "connection_pool", None)  # a Cluster client has one per node
        if pool is not None:
            pool.disconnect(inuse_connections=False)

    def _call(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._guarded(self._script, script, keys, args)

    def _script(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA; on NOSCRIPT (the script did not run) it is loaded and sent once more (how, the
        keyspace says: on a Cluster, to the key's node only)."""
        return self.keyspace.run_script(self.client, script, keys, args)

    def _run(self, command: str, *args: Any) -> Any:
        return self._guarded(cast(Any, self.client).execute_command, command, *args)

    # The hot path: one script, one round trip.

    def charge(self, request: ChargeRequest) -> ChargeResult:
        """Decide and charge one request in one script (see charge.lua for the rules)."""
        if self.hot_path is None:
            self._marker(request.account)  # on a Cluster the first call builds the slot table: not timed
        if self.clock.offset_ms is None and self.charge_budget_ms > 0:
            self._learn_clock(self._account_keys(request.account).state)
        sent_ms = time.time() * 1000
        deadline = self.clock.deadline(sent_ms, self.charge_budget_ms)
        when = charge_time(request.now, self.clock.redis_seconds(sent_ms))
        token = request.token or urandom(8).hex()  # names this charge for voiding it (store/voids.py)
        try:
            reply = self._guarded(self._send_charge, request, deadline, when, token)
        except StoreError as error:
            if maybe_sent(error) and not request.shadow:  # the charge's outcome is unknown
                self.voider.submit(request.account, token, request.ledger_retention)
            raise
        redis_ms, outcome = charge_reply(reply)
        self.clock.observe(redis_ms, sent_ms, time.time() * 1000)
        if isinstance(outcome, StoreError):
            raise outcome
        return outcome

    def _send_charge(self, request: ChargeRequest, deadline: int, when: int, token: str) -> Any:
        """charge.lua's reply, strings decoded: on the hot path, what repeats from one charge of the
        account to the next packed once (hot_path.py); else through the client."""
        account = request.account

        def sent() -> tuple[list[str], list[Any]]:
            keys, marker, totals = self._account_keys(account), self._marker(account), self._totals(account)
            return charge_arguments(request, keys, marker, deadline, when, token, totals)

        if self.hot_path is not None:
            varying = charge_varying(request, deadline, token)
            return self.hot_path.evalsha_kept(charge_cache_key(request, when), varying, sent)
        keys, args = sent()
        return [as_text(v) if isinstance(v, bytes) else v for v in self._script(self._charge, keys, args)]

    def _marker(self, account: str) -> str:
        return self.keyspace.marker(self.keys, account)

    def mark_store(self) -> None:
        """Write the store marker (every slot's on a Cluster): "this Redis holds credit-gate's data";
        before the first, where the day's totals start (store/totals.py: whole, or from tomorrow)."""
        if not self._totals_noted:
            start = totals_start(self.store_marked(), int(time.time()))
            self._run("HSETNX", totals_meta(self.keys.prefix), "from", start)
            self._totals_noted = True
        self._guarded(self.keyspace.mark_store, self.client, self.keys)

    def store_marked(self) -> bool:
        """Whether the marker is there (on a Cluster: on every slot)."""
        return self._guarded(self.keyspace.store_marked, self.client, self.keys)

    def _learn_clock(self, key: str) -> None:
        """Redis's clock, learnt once per store before its first charge (one TIME round trip, two if
        the first was slow: a Cluster client's first command also fetches the slot map), from the
        node that holds ``key`` (on a Cluster, each master has its own clock)."""
        for _ in range(2):
            sent_ms, (seconds, micros), received_ms = self._guarded(self.keyspace.ask_time, self.client, key)
            self.clock.observe(int(seconds) * 1000 + int(micros) // 1000, sent_ms, received_ms)
            if self.clock.error_ms(received_ms) < self.charge_budget_ms / 4:
                return

    def settle(
        self,
        account: str,
        charge_id: str,
        final_cost: int,
        *,
        now: int | None = None,
        refund: bool = False,
        window_seconds: int = 86_400,
        ledger_retention: int = DEFAULT_LEDGER_RETENTION,
        breaker: bool = True,
    ) -> SettleResult:
        """Lower a charge to ``final_cost`` (or refund it whole): at most once per charge, atomically.
        ``breaker=False``: not through the circuit breaker, raising the driver's errors (voids.py)."""
        keys = self.keys.account(account)
        day_of = int(time.time()) if now is None else now
        outcome, given_back, balance, ledger_id = (self._call if breaker else self._script)(
            self._settle,
            [
                keys.state,
                keys.ledger,
                keys.settled(charge_id),
                keys.usage(day_of),
                keys.members,
                keys.holds,
                keys.holds_index,
                self._totals(account) + day_name(day_of),
            ],
            [
                charge_id,
                final_cost,
                "refund" if refund else "settle",
                "" if now is None else now,
                ledger_retention,
                USAGE_TTL_SECONDS,
                window_seconds,
                account,
            ],
        )
        return SettleResult(as_text(outcome), int(given_back), int(balance), as_text(ledger_id))

    # Operators' writes.

    def credit(
        self,
        account: str,
        kind: str,
        amount: int,
        *,
        now: int,
        note: str = "",
        idempotency_key: str = "",
        key_namespace: str = "",
        reference: str = "",
        ledger_retention: int = DEFAULT_LEDGER_RETENTION,
    ) -> CreditResult:
        """Change a balance by ``amount`` (signed), once per idempotency key (credit.lua).

        The key is recorded as ``<key_namespace>:<key>`` (as given when the namespace is ""), with what
        this change did. A positive change pays the account's debt first, the balance gets the rest.
        Raises InsufficientBalance rather than go below 0, BalanceCapReached rather than let the new
        balance pass MAX_CREDITS, and IdempotencyKeyReused when the key answers for another kind or
        amount; nothing changes in any of them.
        """
        keys = self.keys.account(account)
        outcome, balance, ledger_id, first_kind, first_amount, debt, paid = self._call(
            self._credit,
            [keys.state, keys.ledger, keys.idempotency],
            [kind, amount, note, idempotency_key, now, ledger_retention, reference, key_namespace],
        )
        if int(outcome) == -1:
            raise InsufficientBalance(int(balance))
        if int(outcome) == -2:
            raise BalanceCapReached(int(balance))
        if int(outcome) == -3:
            raise IdempotencyKeyReused(
                idempotency_key, as_text(first_kind), int(first_amount), as_text(ledger_id)
            )
        return CreditResult(
            int(outcome) == 1, int(balance), as_text(ledger_id), int(first_amount), int(debt), int(paid)
        )

    def put_plan(self, plan: Plan) -> None:
        self._run("SET", self.keys.plan(plan.name), json.dumps(plan.to_document(), sort_keys=True))
        self._run("SADD", self.keys.plans, plan.name)

    def get_plan(self, name: str) -> Plan | None:
        raw = self._run("GET", self.keys.plan(name))
        return Plan.from_document(json.loads(raw)) if raw else None

    def plan_names(self) -> list[str]:
        return sorted(as_text(name) for name in self._run("SMEMBERS", self.keys.plans))

    def delete_plan(self, name: str) -> None:
        self._run("DEL", self.keys.plan(name))
        self._run("SREM", self.keys.plans, name)

    def plan_accounts(self, name: str) -> list[str]:
        return sorted(as_text(a) for a in self._run("SMEMBERS", self.keys.plan_accounts(name)))

    def sync_plan_terms(self, plan: Plan, account: str) -> bool:
        keys = self.keys.account(account)
        updated = self._call(
            self._plan_terms,
            [keys.state],
            [plan.name, plan.period.value, plan.allowance, "1" if plan.prepaid else "0"],
        )
        return int(updated) == 1

    def subscribe(self, subscription: Subscription, plan: Plan) -> str:
        """Set the subscription and copy the plan's terms; returns the previous plan name or ""."""
        keys = self.keys.account(subscription.account)
        self._plan_index.before(subscription.account, plan.name)
        previous = as_text(
            self._call(
                self._subscribe,
                [keys.state],
                [
                    plan.name,
                    subscription.status.value,
                    subscription.starts_at,
                    subscription.anchor,
                    subscription.expires_at or 0,
                    plan.period.value,
                    plan.allowance,
                    "1" if plan.prepaid else "0",
                    *self._plan_index.args(subscription.account),
                ],
            )
        )
        self._plan_index.repair(subscription.account, [previous, plan.name], plan.name)
        self._run("SADD", self.keys.accounts, subscription.account)
        return previous

    def set_status(self, account: str, status: Status) -> str:
        """Returns the previous status, or "" when the account has no subscription."""
        return as_text(self._call(self._set_status, [self.keys.account(account).state], [status.value]))

    def set_member_cap(self, pool: str, member: str, cap: int | None) -> None:
        """A pool member's cap per period of the pool's plan (None: no cap). One field: atomic as is."""
        members = self.keys.account(pool).members
        if cap is None:
            self._run("HDEL", members, f"cap:{member}")
        else:
            self._run("HSET", members, f"cap:{member}", cap)

    def member_caps(self, pool: str) -> dict[str, int]:
        raw = self._run("HGETALL", self.keys.account(pool).members)
        return {as_text(k)[4:]: int(v) for k, v in raw.items() if as_text(k).startswith("cap:")}

    def add_account(self, account: str) -> None:
        self._run("SADD", self.keys.accounts, account)

    def account_names(self) -> list[str]:
        return sorted(as_text(a) for a in self._run("SMEMBERS", self.keys.accounts))

    # Reads.

    def account_state(self, account: str) -> AccountState:
        return account_state_reply(account, self._run("HGETALL", self.keys.account(account).state))

    def ledger(
        self, account: str, start: str = "-", end: str = "+", batch: int = 1000
    ) -> Iterator[LedgerEntry]:
        """The account's ledger entries between two stream ids, oldest first, read in batches."""
        key = self.keys.account(account).ledger
        cursor = start
        while True:
            entries = self._run("XRANGE", key, cursor, end, "COUNT", batch)
            for entry in entries:
                yield ledger_entry_reply(account, entry)
            if len(entries) < batch:
                return
            cursor = "(" + as_text(entries[-1][0])

    def usage(self, account: str, day_epoch: int) -> dict[str, int]:
        raw = self._run("HGETALL", self.keys.account(account).usage(day_epoch))
        return {as_text(k): int(v) for k, v in raw.items()}

    # Operators' views and bulk writes. Reads that span many keys go in one pipeline per batch.

    def _pipeline(self, fill: Callable[[Any], None], *, transaction: bool = False) -> list[Any]:
        def run() -> list[Any]:
            pipe = cast(Any, self.client).pipeline(transaction=transaction)
            fill(pipe)
            return list(pipe.execute())

        return self._guarded(run)

    def account_states(self, accounts: Sequence[str]) -> list[AccountState]:
        """Many accounts' hashes in one round trip."""

        def fill(pipe: Any) -> None:
            for account in accounts:
                pipe.hgetall(self.keys.account(account).state)

        replies = zip(accounts, self._pipeline(fill), strict=True)
        return [account_state_reply(account, reply) for account, reply in replies]

    def ledger_snapshot(self, account: str) -> tuple[AccountState, list[LedgerEntry]]:
        """The account's hash and whole ledger read in one MULTI, so a concurrent charge cannot fall between
        them: the two agree exactly (the ledger is bounded by the retention)."""
        keys = self.keys.account(account)

        def fill(pipe: Any) -> None:
            pipe.hgetall(keys.state)
            pipe.xrange(keys.ledger, "-", "+")

        state, entries = self._pipeline(fill, transaction=True)
        return account_state_reply(account, state), [ledger_entry_reply(account, e) for e in entries]

    def ledger_tail(self, account: str, count: int, start: str = "-", end: str = "+") -> list[LedgerEntry]:
        """The newest ``count`` entries between two stream ids, oldest first."""
        entries = self._run("XREVRANGE", self.keys.account(account).ledger, end, start, "COUNT", count)
        return [ledger_entry_reply(account, e) for e in reversed(entries)]

    def change_plan(self, account: str, plan: Plan) -> str:
        """Move a subscribed account to ``plan``; returns the previous plan, or "" for no subscription."""
        self._plan_index.before(account, plan.name)
        previous = as_text(
            self._call(
                self._change_plan,
                [self.keys.account(account).state],
                [
                    plan.name,
                    plan.period.value,
                    plan.allowance,
                    "1" if plan.prepaid else "0",
                    *self._plan_index.args(account),
                ],
            )
        )
        # Nothing written without a subscription: the set added to before is put right by its plan.
        self._plan_index.repair(account, [previous, plan.name], plan.name if previous else None)
        return previous

    def import_row(
        self,
        account: str,
        subscription: tuple[Subscription, Plan] | None,
        grant: int,
        *,
        key: str,
        note: str,
        now: int,
        ledger_retention: int = DEFAULT_LEDGER_RETENTION,
    ) -> ImportOutcome:
        """One import row (a subscription, an opening grant) in one script: applied wholly or not at all."""
        keys = self.keys.account(account)
        terms = import_terms(subscription)
        plan_name = terms[0]
        if plan_name:
            self._plan_index.before(account, plan_name)
        previous, outcome, balance, ledger_id = self._call(
            self._import_row,
            [keys.state, keys.ledger, keys.idempotency],
            [*terms, grant, key, note, now, ledger_retention, *self._plan_index.args(account)],
        )
        previous_plan = as_text(previous)
        if plan_name:
            # Refused (-2): nothing was written, and the set added to before is put right by its plan.
            self._plan_index.repair(
                account, [previous_plan, plan_name], None if int(outcome) == -2 else plan_name
            )
        if int(outcome) == -2:
            raise BalanceCapReached(int(balance))
        self._run("SADD", self.keys.accounts, account)
        return ImportOutcome(previous_plan, int(outcome), int(balance), as_text(ledger_id))

    # The balance route: one read-only script, one round trip.

    @cached_property
    def _balance(self) -> Script:
        """balance.lua, registered on first use (only stores behind a balance route need it)."""
        script: Script = self.client.register_script(_script_source("balance"))
        return script

    def balance(self, account: str, member: str = "") -> BalanceView:
        """What ``account`` holds now, at Redis's time, as the next charge would find it (balance.lua).

        Reads only: one script, checked as strictly as the charge (a field that does not parse raises
        StoreDataError, never a wrong figure). ``member`` is the asking pool member, "" for none.
        """
        keys = self._account_keys(account)
        marker = self._marker(account)
        reply = self._call(self._balance, [keys.state, keys.members, marker], [member])
        return balance_reply(reply)

    # The node reports (store/nodes.py): a plugin server's breaker and Redis errors, for /metrics.

    def write_node_report(self, node: str, fields: Mapping[str, str | int | float], ttl_seconds: int) -> None:
        """Publish this node's report. Not through the breaker, and failures are not counted: the report
        is no request (it must neither take the half-open circuit's probe nor close it), and its counts
        are cumulative, so the next write carries what a failed one lost."""
        nodes.write_report(self.client, self.keys.prefix, node, fields, ttl_seconds)

    def node_reports(self) -> dict[str, dict[str, str]]:
        """Every plugin server node's latest report, by node id; expired nodes are dropped from the list."""
        return self._guarded(nodes.read_reports, self.client, self.keys.prefix)
