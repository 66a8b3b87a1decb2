"""Telling Kong what the policy decided: the last PDK calls of an access phase, for both roles.

The gate and the balance role (``balance.py``) end their access phase here, each with one ``Action``:
a ``Respond`` ends the request with ``kong.response.exit`` (a refusal, or the balance role's 200), a
``Proxy`` sends it on with its headers. ``kong.response.exit`` ends the event on Kong's side: no PDK
call may follow it.
"""

from __future__ import annotations

from typing import Any

from creditgate.core.policy import Action, Respond
from creditgate.kong.notices import NOTICES, to_stderr

# The key of kong.ctx.shared under which the access phase records the charge the log phase may settle.
# kong.ctx.shared lives as long as the request, and Kong hands the same table to the log timer
# (kong/runloop/plugin_servers/plugin.lua: ``ctx_shared = kong.ctx.shared`` in the data saved for
# later); only plugins the operator installed can write it. Nothing travels in a header: a header
# sent upstream is seen by an upstream that echoes requests, and a request header in the log phase
# is whatever the client sent.
CHARGE_CONTEXT_KEY = "credit-gate.charge"


def apply(kong: Any, action: Action) -> bool:
    """Tell Kong the action. True when the request was ended with ``kong.response.exit``. Never raises."""
    ending = isinstance(action, Respond)  # once exit is tried, never end the event another way
    try:
        if NOTICES.pending:
            NOTICES.flush(kong)
        if action.log:
            getattr(kong.log, action.log_level)(action.log)
        if isinstance(action, Respond):
            problem = action.problem
            kong.response.exit(problem.status, action.encoded or problem.encoded(), problem.headers)
            return True  # Kong sends nothing more for this event after exit.
        # The upstream's headers before the upstream: a plugin server that dies between the two calls
        # leaves the request on its way to the dead end, never to the API without its X-Credit-*.
        kong.service.request.set_headers(action.upstream)
        if action.route_to:
            # Fail-closed deployments: only an allowed request is sent to the paid upstream.
            kong.service.set_upstream(action.route_to)
        if action.charge:
            kong.ctx.shared.set(CHARGE_CONTEXT_KEY, action.charge)
        if action.client:
            kong.response.set_headers(action.client)
    except Exception as error:  # the channel to Kong itself failed: nothing more can be sent
        to_stderr(f"could not apply the decision: {type(error).__name__}: {error}")
    return ending
