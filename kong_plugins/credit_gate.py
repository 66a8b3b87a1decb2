"""credit-gate: the Kong plugin. Kong's contract lives here; the work is in the ``creditgate`` package.

Run by Kong as a dedicated plugin server (``credit-gate-pluginserver``), one per plugin, as Kong 3.9
registers only the first plugin a server reports.
"""

from __future__ import annotations

import sys
from typing import Any

from creditgate import pdk_runtime
from creditgate.core.redis_settings import REDIS_FIELDS

version = "0.1.0"

# Kong runs plugins from the highest priority down. 1 puts the gate after every bundled plugin that
# may still refuse a request in the access phase (authentication 1000-1450, acl 950, rate-limiting
# 910, response-ratelimiting 900, proxy-cache 100 (a cache hit is not charged), ai-prompt-guard 15,
# request-termination 2), so that a request another plugin refuses is never charged.
priority = 1

_PROBLEM_TYPE_BASE = "urn:credit-gate:problem:"

Schema: list[dict[str, Any]] = [
    {
        "cost": {
            "type": "integer",
            "default": 1,
            "required": True,
            "between": [0, 1_000_000_000],
            "description": "Credits charged for each request through this plugin instance.",
        }
    },
    {
        "plans": {
            "type": "array",
            "elements": {"type": "string"},
            "default": [],
            "required": True,
            "description": "Plans this route or service is sold in; empty means any plan. "
            "An account on another plan is refused with 402 plan_not_entitled.",
        }
    },
    {
        "account_by": {
            "type": "string",
            "default": "consumer_id",
            "required": True,
            "one_of": ["consumer_id", "consumer_username", "consumer_custom_id", "credential_id"],
            "description": "Which authenticated identity names the account that pays: the consumer's id, "
            "username or custom_id, or the credential's id (one balance per API key).",
        }
    },
    {
        "payment_url": {
            "type": "string",
            "description": "Where a refused client can pay or top up; sent as payment_url in every 402 body.",
        }
    },
    {
        "problem_type_base": {
            "type": "string",
            "default": _PROBLEM_TYPE_BASE,
            "required": True,
            "description": "Prefix of the problem type URI; the reason code is appended.",
        }
    },
    {
        "fault_tolerant": {
            "type": "boolean",
            "default": False,
            "required": True,
            "description": "When Redis fails: false refuses with 503 store_unavailable; "
            "true proxies the request unmetered and logs it.",
        }
    },
    {
        "hide_client_headers": {
            "type": "boolean",
            "default": False,
            "required": True,
            "description": "Do not send the X-Credit-* figures to the client.",
        }
    },
    {
        "upstream": {
            "type": "string",
            "description": "Fail-closed routing: the name of the Kong upstream that allowed requests go to. "
            "The service's own host must then lead nowhere paid, so that a request Kong proxies "
            "without the plugin (plugin server down, hung or erroring) never reaches the API. "
            "Costs one PDK call per allowed request.",
        }
    },
    {
        "key_prefix": {
            "type": "string",
            "default": "credit-gate",
            "required": True,
            "description": "Prefix of every Redis key; the CLI must use the same.",
        }
    },
    {
        "ledger_retention": {
            "type": "integer",
            "default": 10_000,
            "required": True,
            "between": [100, 10_000_000],
            "description": "Ledger entries kept per account; older ones are folded into the opening balance.",
        }
    },
    {
        "redis": {
            "type": "record",
            "required": True,
            "description": "Where balances live.",
            "fields": REDIS_FIELDS,
        }
    },
]


class Plugin:
    """Kong's entry point: kong-pdk builds one per plugin instance and calls its phases."""

    def __init__(self, config: dict[str, Any]) -> None:
        from creditgate.handler import Gate  # imported late: see main()

        self.gate = Gate(config)

    def access(self, kong: Any) -> None:
        self.gate.access(kong)


def main() -> None:
    """``credit-gate-pluginserver``: kong-pdk's dedicated server for this plugin.

    Takes kong-pdk's flags (``--dump``, ``--kong-prefix``, ``--socket-name``, ``-g``, ``-m``, ``-v``).
    PDK calls return values and raise on error (``--no-lua-style``), which the gate relies on.
    With ``-g`` the standard library is patched for gevent first, before redis-py is imported: this
    module imports nothing heavy at its top for that reason.
    """
    if pdk_runtime.wants_gevent(sys.argv[1:]):
        pdk_runtime.patch_for_gevent()
    from kong_pdk.cli import start_dedicated_server

    pdk_runtime.install_exit_fix()
    if "--no-lua-style" not in sys.argv:
        sys.argv.append("--no-lua-style")
    start_dedicated_server("credit-gate", Plugin, version, priority, Schema)


if __name__ == "__main__":
    main()
