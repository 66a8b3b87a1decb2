"""The Kong side of the gate: read who is calling, charge, and apply the decision.

The decision is the core's (``core/policy.py``: who pays, what is charged, shadow mode, the failure
policy, the headers, what the log phase gives back); this module reads the request from Kong, makes
the one store call, and tells Kong the answer (``answer.py``, shared with the balance role). The
Redis stores the instances share are in ``stores.py``, what the operator is told in ``notices.py``.

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

import time
from collections.abc import Callable, Mapping
from os import urandom
from typing import Any

from creditgate.core import policy, witness
from creditgate.core.config import AccountBy, GateConfig, Role, parse_config
from creditgate.core.policy import IDEMPOTENCY_HEADER, Action, ChargeRequest, RequestFacts
from creditgate.errors import ConfigError, StoreError, StoreRefused
from creditgate.kong import balance as balance_route
from creditgate.kong import notices
from creditgate.kong.answer import CHARGE_CONTEXT_KEY, apply
from creditgate.kong.notices import NOTICES, to_stderr
from creditgate.kong.stores import STORES
from creditgate.store.store import RedisStore


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
        # The balance role answers every request itself (balance.py); an invalid config is the gate's.
        self.balance: tuple[GateConfig, RedisStore] | None = None
        if self.config is not None and self.store is not None and self.config.role is Role.BALANCE:
            self.balance = (self.config, self.store)
        if self.config_error:
            NOTICES.say(
                f"config:{self.config_error}",
                "err",
                f"invalid configuration, every request through this instance is refused: {self.config_error}",
            )

    # The access phase

    def access(self, kong: Any) -> bool:
        """Decide and tell Kong. True when the request was ended here with ``kong.response.exit``."""
        if self.balance is not None:
            return balance_route.balance_access(*self.balance, kong)
        facts: RequestFacts | Exception
        try:
            facts = self._read_request(kong)
        except Exception as error:
            facts = error
        try:
            action = self._decide(facts, kong)
        except Exception as error:
            action = policy.internal_error(self.config, error)
        ended = apply(kong, action)
        if not ended and self.config is not None and self.config.bypass_witness:
            # Let through, with its upstream named: the API never sees a token (one an API echoed back
            # could be sent to the dead end while the server is down, to give a served charge back).
            try:
                kong.service.request.clear_header(witness.HEADER)
            except Exception as error:  # the channel to Kong failed: the request is on its way
                to_stderr(f"could not clear the witness mark: {type(error).__name__}: {error}")
        return ended

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
        return policy.request_facts(
            (identity, method or "", path or "", key or None)
        )  # all its fields, in order

    # The decision: no PDK calls below this line until apply (answer.py), but the bypass witness's mark.

    def _decide(self, facts: RequestFacts | Exception, kong: Any = None) -> Action:
        """The core's policy around the one store call."""
        if isinstance(facts, Exception):
            return policy.internal_error(self.config, facts)
        config, store = self.config, self.store
        if config is None or store is None:
            return policy.misconfigured()
        request = policy.charge_request(config, facts, None if self.clock is None else int(self.clock()))
        if request is None:
            return policy.unauthenticated(config)
        if not isinstance(request, ChargeRequest):
            return request  # not priced: a path past the cost rules' bound (policy.unpriced)
        marked = config.bypass_witness and kong is not None and not request.shadow
        if marked:
            # Before the charge, on the request to the upstream: if this server dies after charging,
            # Kong itself carries the mark to the fail-closed dead end, whose log reports it (witness.py).
            # Kong's request id goes with the charge: an event Kong runs again charges once.
            request_id = witness.request_id_of(kong.nginx.get_var("request_id"))
            request = request._replace(token=urandom(8).hex(), request_id=request_id)
            kong.service.request.set_header(witness.HEADER, witness.mark(request.account, request.token))
        try:
            action = self._charge(config, store, request)
        except Exception as error:
            action = policy.internal_error(config, error)
        return action

    def _charge(self, config: GateConfig, store: RedisStore, request: ChargeRequest) -> Action:
        try:
            result = store.charge(request)
        except StoreError as error:
            if isinstance(error, StoreRefused):
                notices.store_refused(error)
            return policy.store_failed(config, request, error)
        return policy.decided(config, request, result)

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
