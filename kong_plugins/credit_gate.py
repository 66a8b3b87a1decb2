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
_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")

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
        "role": {
            "type": "string",
            "default": "gate",
            "required": True,
            "one_of": ["gate", "balance"],
            "description": "gate charges each request and proxies it; balance answers the authenticated "
            "consumer with its own account as JSON (schemas/balance.schema.json), never charged, never "
            "proxied. The settings about charging do nothing in the balance role.",
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
        "account_namespace": {
            "type": "string",
            "len_min": 0,
            "description": "The account is <namespace>:<identity>. Unset: the kind account_by names "
            "(username, custom_id, credential; consumer ids, which are UUIDs, stay bare), so identities "
            "of different kinds never share an account. The same value on several entries shares their "
            "accounts on purpose; an empty string gives bare names, one namespace for every kind.",
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
        "breaker_failures": {
            "type": "integer",
            "default": 5,
            "required": True,
            "between": [0, 1000],
            "description": "Redis failures (unreachable or too slow) in a row after which the gate stops "
            "waiting on Redis for breaker_cooldown_ms and answers at once as fault_tolerant says; "
            "0 turns the circuit breaker off.",
        }
    },
    {
        "breaker_cooldown_ms": {
            "type": "integer",
            "default": 1000,
            "required": True,
            "between": [10, 600_000],
            "description": "Milliseconds the circuit stays open before one request probes Redis again; "
            "its success closes the circuit, its failure opens it for another cool-down.",
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
        "enforce": {
            "type": "boolean",
            "default": True,
            "required": True,
            "description": "false is shadow mode: nothing is refused or charged; the X-Credit-Shadow "
            "response header and the usage counters say what would have happened.",
        }
    },
    {
        "costs": {
            "type": "array",
            "default": [],
            "required": True,
            "description": "Cost rules tried in order before the flat cost: the first whose methods and "
            "path match sets the cost. In a path, * is one segment and ** anything.",
            "elements": {
                "type": "record",
                "fields": [
                    {
                        "methods": {
                            "type": "array",
                            "default": [],
                            "required": True,
                            "elements": {"type": "string", "one_of": sorted(_HTTP_METHODS)},
                            "description": "HTTP methods the rule applies to; empty means any.",
                        }
                    },
                    {"path": {"type": "string", "description": "Path pattern, e.g. /v1/models/*."}},
                    {
                        "cost": {
                            "type": "integer",
                            "required": True,
                            "between": [0, 1_000_000_000],
                            "description": "Credits a matching request costs.",
                        }
                    },
                ],
            },
        }
    },
    {
        "idempotency_window": {
            "type": "integer",
            "default": 0,
            "required": True,
            "between": [0, 604_800],
            "description": "Seconds during which a retry with the same Idempotency-Key request header, "
            "from the same account, is not charged again; 0 turns it off.",
        }
    },
    {
        "refund_on_failure": {
            "type": "boolean",
            "default": False,
            "required": True,
            "description": "Give the charge back when the upstream answers with one of refund_statuses "
            "(needs the plugin server's --log-phase).",
        }
    },
    {
        "refund_statuses": {
            "type": "array",
            "default": ["5xx"],
            "required": True,
            "elements": {"type": "string"},
            "description": 'Statuses that are refunded: exact ("503") or a class ("5xx").',
        }
    },
    {
        "settle_header": {
            "type": "string",
            "description": "Hold, then settle: the cost is held before the call and settled to the "
            "integer the upstream sends in this response header (needs --log-phase).",
        }
    },
    {
        "settle_timeout": {
            "type": "integer",
            "default": 300,
            "required": True,
            "between": [1, 86_400],
            "description": "Seconds a hold may be settled; an unsettled hold is final at its full amount.",
        }
    },
    {
        "pool_tag_prefix": {
            "type": "string",
            "description": "Pooled balances: a consumer tagged <prefix><pool> draws from the pool's account, "
            "within the cap the pool sets for it. E.g. credit-pool:",
        }
    },
    {
        "warn_balance_below": {
            "type": "integer",
            "default": 0,
            "required": True,
            "between": [0, 1_000_000_000_000_000],
            "description": "Warn (X-Credit-Warning: low_balance) when an allowed request leaves less; "
            "0 is off.",
        }
    },
    {
        "warn_allowance_below": {
            "type": "integer",
            "default": 0,
            "required": True,
            "between": [0, 1_000_000_000_000_000],
            "description": "Warn (low_allowance) when the period's allowance left falls below this; "
            "0 is off.",
        }
    },
    {
        "warn_expiry_days": {
            "type": "integer",
            "default": 0,
            "required": True,
            "between": [0, 3650],
            "description": "Warn (subscription_expiring) when the subscription ends within this many days.",
        }
    },
    {
        "rate_limit_headers": {
            "type": "boolean",
            "default": False,
            "required": True,
            "description": "Send the IETF RateLimit and RateLimit-Policy fields for the plan's "
            "allowance, in credits.",
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
    """Kong's entry point: kong-pdk builds one per plugin instance and calls its phases.

    kong-pdk finds the phases by looking for methods, and every phase is one more round trip per
    request, so this class has only ``access``; ``SettlingPlugin`` adds ``log``.
    """

    log_phase = False

    def __init__(self, config: dict[str, Any]) -> None:
        from creditgate.handler import Gate  # imported late: see main()

        self.gate = Gate(config, log_phase=self.log_phase)
        # kong-pdk calls the phase it finds on the instance: the gate's own, one call fewer per request.
        self.access = self.gate.access  # type: ignore[method-assign]

    def access(self, kong: Any) -> bool:
        """Declares the phase to kong-pdk (it lists the class's methods); each instance uses its gate's."""
        return self.gate.access(kong)  # True: the request was ended with kong.response.exit


class SettlingPlugin(Plugin):
    """The plugin with Kong's log phase, for refunds on failure and hold-then-settle (``--log-phase``)."""

    log_phase = True

    def log(self, kong: Any) -> None:
        self.gate.log(kong)


LOG_PHASE_FLAG = "--log-phase"
HELP_EPILOG = f"""
credit-gate:
  {LOG_PHASE_FLAG:<20}  also run in Kong's log phase, for refund_on_failure and settle_header;
                        give it to the query command too (Kong reads the phases from --dump)
  --processes N         server processes behind the socket (default one per core; 1 is a single
                        process): each nginx worker's connections stay with one of them

Kong starts this command with an empty environment (no PATH): give kong.conf its absolute path, or
link it into /usr/local/bin. `credit-gate kong-conf` prints the kong.conf lines.
"""


def print_help() -> None:
    """kong-pdk's own --help (its parser knows only its flags), then this server's flag."""
    import contextlib
    import io

    from kong_pdk.cli import parse

    text = io.StringIO()
    argv, sys.argv = sys.argv, [sys.argv[0], "--help"]
    try:
        with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
            parse(dedicated=True)
    finally:
        sys.argv = argv
    sys.stdout.write(text.getvalue() + HELP_EPILOG)


def main() -> None:
    """``credit-gate-pluginserver``: kong-pdk's dedicated server for this plugin.

    Takes kong-pdk's flags (``--dump``, ``--kong-prefix``, ``--socket-name``, ``-g``, ``-m``, ``-v``),
    ``--processes N`` (server processes behind the socket; default one per core, 1 is a single
    process: see ``creditgate.multiprocess``) and ``--log-phase`` for the features that act after
    the response (give it to the query command too: Kong learns the plugin's phases from the dump).
    PDK calls return values and raise on error (``--no-lua-style``), which the gate relies on.
    With ``-g`` the standard library is patched for gevent first, before redis-py is imported: this
    module imports nothing heavy at its top for that reason.
    """
    if {"-h", "--help"} & set(sys.argv[1:]):
        print_help()
        return
    from creditgate import multiprocess

    try:
        flags = multiprocess.split_flags(sys.argv[1:])
    except ValueError as error:
        print(f"credit-gate-pluginserver: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.argv[1:] = flags.rest
    if pdk_runtime.wants_processes(sys.argv[1:]):
        # kong-pdk's process mode pickles the plugin instance for each event; an instance holds a Redis
        # connection pool, which cannot be pickled, and the event then never answers: every request
        # would hang, and Kong would proxy it unpaid. Refuse to start instead.
        print(
            "credit-gate-pluginserver: kong-pdk's process mode (-m) cannot run this plugin; "
            "use -g (gevent, recommended) or no flag (threads)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if flags.processes > 1 and flags.channel_fd is None and not multiprocess.ONE_SHOT_FLAGS & set(flags.rest):
        # An acceptor in front of `--processes` server processes (multiprocess.py): nothing heavy
        # is imported in this process, each server process runs this main() with --processes 1.
        raise SystemExit(multiprocess.run_acceptor(flags.processes, flags.rest))
    if pdk_runtime.wants_gevent(sys.argv[1:]):
        pdk_runtime.patch_for_gevent()
    from kong_pdk.cli import start_dedicated_server

    pdk_runtime.install_exit_fix()
    pdk_runtime.install_small_read_buffers()
    pdk_runtime.install_unique_ids()
    if "--no-lua-style" not in sys.argv:
        sys.argv.append("--no-lua-style")
    plugin = Plugin
    if LOG_PHASE_FLAG in sys.argv:
        sys.argv.remove(LOG_PHASE_FLAG)
        plugin = SettlingPlugin
    if flags.channel_fd is not None:
        multiprocess.serve_from_channel(flags.channel_fd)
    start_dedicated_server("credit-gate", plugin, version, priority, Schema)


if __name__ == "__main__":
    main()
