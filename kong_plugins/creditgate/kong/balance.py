"""The balance role at Kong: the authenticated consumer's own account, answered as JSON.

A plugin entry with ``role: balance`` never charges and never proxies: every request through it is
ended here with ``kong.response.exit``, with the account's figures (200) or a problem (401, 500, 503).
The identity comes from Kong only, read as the gate reads it (``account_by``, ``account_namespace``,
``pool_tag_prefix``), so a client can only ever see the account its own credentials pay from.

Per request it costs what the gate's refused path costs: one PDK call for the identity, one Redis
script (``store/lua/balance.lua``, read only), one PDK call for the answer. Redis down is a 503
whatever ``fault_tolerant`` says: there is nothing to let through, and a balance is never made up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from creditgate.core import policy
from creditgate.core.balance import balance_answer
from creditgate.core.config import AccountBy, GateConfig
from creditgate.errors import StoreDataError, StoreError
from creditgate.kong.answer import apply
from creditgate.store.store import RedisStore


def balance_access(config: GateConfig, store: RedisStore, kong: Any) -> bool:
    """The access phase of a balance entry (the gate's config and store; the gate answers an invalid
    config itself): always ends the request. Never raises."""
    action: policy.Action
    try:
        if config.account_by is AccountBy.CREDENTIAL_ID:
            identity = kong.client.get_credential()
        else:
            identity = kong.client.get_consumer()
        action = _answer(config, store, identity)
    except Exception as error:
        action = policy.internal_error(config, error)
    return apply(kong, action)


def _answer(config: GateConfig, store: RedisStore, identity: Mapping[str, Any] | None) -> policy.Action:
    """No PDK call in here: the identity in, the answer out."""
    paying = policy.who_pays(config, identity)
    if paying is None:
        return policy.unauthenticated(config)
    payer, member = paying
    try:
        view = store.balance(payer, member)
    except StoreDataError as error:
        log = f"credit-gate: balance of account '{payer}' answered 500, {error}"
        return policy.data_invalid(config, "its balance cannot be shown", log)
    except StoreError as error:
        log = f"credit-gate: store unavailable, balance answered 503: {error}"
        return policy.unavailable(config, error, "the balance cannot be shown", log)
    # Respond ends the request with this answer: a refusal above, a 200 here, applied the same way.
    return policy.Respond(balance_answer(view, payer, member, config.warnings))
