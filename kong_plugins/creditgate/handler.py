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
  the headers (upstream, client) or one to refuse.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from creditgate.core.config import AccountBy, GateConfig, RedisSettings, parse_config
from creditgate.core.decision import (
    ChargeResult,
    Problem,
    Reason,
    client_headers,
    failure,
    refusal,
    upstream_headers,
)
from creditgate.errors import ConfigError, StoreError
from creditgate.store.redis_store import RedisStore

DEFAULT_TYPE_BASE = "urn:credit-gate:problem:"


class _StoreRegistry:
    """One Redis client (and its connection pool) per distinct Redis setting, shared by instances.

    Kong re-creates every plugin instance on any configuration change; sharing the pools keeps
    connections from churning each time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[tuple[RedisSettings, str], RedisStore] = {}

    def get(self, settings: RedisSettings, prefix: str) -> RedisStore:
        with self._lock:
            store = self._stores.get((settings, prefix))
            if store is None:
                store = RedisStore.from_settings(settings, prefix)
                self._stores[(settings, prefix)] = store
            return store


STORES = _StoreRegistry()


@dataclass(frozen=True)
class Proxy:
    """Let the request through with these headers."""

    upstream: dict[str, str]
    client: dict[str, str] | None
    route_to: str | None = None
    log: str | None = None


@dataclass(frozen=True)
class Refuse:
    """End the request with this problem."""

    problem: Problem
    log: str | None = None


Action = Proxy | Refuse


def _stderr(message: str) -> None:
    # The plugin server's stderr is merged into Kong's error log by Kong's process manager.
    print(f"[credit-gate] {message}", file=sys.stderr, flush=True)


class Gate:
    """One plugin instance: its parsed config and its store. Never raises."""

    def __init__(self, raw_config: Mapping[str, Any]) -> None:
        self.config: GateConfig | None = None
        self.config_error: str | None = None
        self.store: RedisStore | None = None
        try:
            self.config = parse_config(raw_config)
            self.store = STORES.get(self.config.redis, self.config.key_prefix)
        except ConfigError as error:
            self.config_error = str(error)
        except Exception as error:  # a bug or an unusable setting: refuse, never pass
            self.config_error = f"{type(error).__name__}: {error}"
        if self.config_error:
            _stderr(
                f"invalid configuration, every request through this instance is refused: {self.config_error}"
            )

    # The phase

    def access(self, kong: Any) -> None:
        identity: Mapping[str, Any] | Exception | None
        try:
            identity = self._read_identity(kong)
        except Exception as error:
            identity = error
        try:
            action = self._decide(identity)
        except Exception as error:
            action = self._internal_error(error)
        self._apply(kong, action)

    def _read_identity(self, kong: Any) -> Mapping[str, Any] | None:
        """The authenticated consumer or credential, from Kong: the only source of identity."""
        by = self.config.account_by if self.config else AccountBy.CONSUMER_ID
        if by is AccountBy.CREDENTIAL_ID:
            credential: Mapping[str, Any] | None = kong.client.get_credential()
            return credential
        consumer: Mapping[str, Any] | None = kong.client.get_consumer()
        return consumer

    # The decision: no PDK calls below this line until _apply.

    def _decide(self, identity: Mapping[str, Any] | Exception | None) -> Action:
        if isinstance(identity, Exception):
            return self._internal_error(identity)
        config = self.config
        if config is None or self.store is None:
            return Refuse(
                failure(
                    Reason.MISCONFIGURED,
                    "The gateway's billing configuration is invalid; the operator has been told.",
                    type_base=DEFAULT_TYPE_BASE,
                ),
                log=f"credit-gate: invalid configuration: {self.config_error}",
            )
        account = self._account(identity, config.account_by)
        if account is None:
            return Refuse(
                failure(
                    Reason.UNAUTHENTICATED,
                    "This API needs an authenticated consumer; send your API credentials.",
                    type_base=config.problem_type_base,
                )
            )
        try:
            result = self.store.charge(
                account,
                config.cost,
                now=int(time.time()),
                entitled=config.plans,
                route=config.route,
                ledger_retention=config.ledger_retention,
            )
        except StoreError as error:
            return self._store_failure(config, account, error)
        return self._act(config, account, result)

    @staticmethod
    def _account(identity: Mapping[str, Any] | None, by: AccountBy) -> str | None:
        if not identity or not isinstance(identity, Mapping):
            return None
        field = {
            AccountBy.CONSUMER_ID: "id",
            AccountBy.CONSUMER_USERNAME: "username",
            AccountBy.CONSUMER_CUSTOM_ID: "custom_id",
            AccountBy.CREDENTIAL_ID: "id",
        }[by]
        value = identity.get(field)
        return value if isinstance(value, str) and value else None

    @staticmethod
    def _act(config: GateConfig, account: str, result: ChargeResult) -> Action:
        if result.allowed:
            return Proxy(
                upstream=upstream_headers(account, result),
                client=None if config.hide_client_headers else client_headers(result),
                route_to=config.upstream,
            )
        return Refuse(
            refusal(
                result,
                type_base=config.problem_type_base,
                payment_url=config.payment_url,
                entitled=config.plans,
            )
        )

    @staticmethod
    def _store_failure(config: GateConfig, account: str, error: StoreError) -> Action:
        if config.fault_tolerant:
            return Proxy(
                upstream=upstream_headers(account, None),
                client=None,
                route_to=config.upstream,
                log=f"credit-gate: store unavailable, request proxied UNMETERED (fault_tolerant): {error}",
            )
        return Refuse(
            failure(
                Reason.STORE_UNAVAILABLE,
                "Billing is temporarily unavailable, so the request was not processed. Retry shortly.",
                type_base=config.problem_type_base,
                retry_after_seconds=1,
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
    def _apply(kong: Any, action: Action) -> None:
        try:
            if action.log:
                kong.log.err(action.log) if isinstance(action, Refuse) else kong.log.warn(action.log)
            if isinstance(action, Refuse):
                problem = action.problem
                kong.response.exit(problem.status, problem.encoded(), problem.headers)
                return  # Kong sends nothing more for this event after exit.
            if action.route_to:
                # Fail-closed deployments: only an allowed request is sent to the paid upstream.
                kong.service.set_upstream(action.route_to)
            kong.service.request.set_headers(action.upstream)
            if action.client:
                kong.response.set_headers(action.client)
        except Exception as error:  # the channel to Kong itself failed: nothing more can be sent
            _stderr(f"could not apply the decision: {type(error).__name__}: {error}")
