"""The plugin's Kong schema: every setting's type, default, bounds and description, declared once.

Kong validates a plugin entry's ``config`` against these fields before the plugin sees it (the plugin
file hands them to kong-pdk as ``Schema``); ``creditgate.core.kong_schema`` turns them into
``schemas/plugin-config.schema.json`` and the README's table. Everything else that needs a default or
a bound (the config parser, the pricing rules, the CLI's options, ``Admin``) reads it here with
``declared``, ``default`` and ``between``, so that a setting is changed in one place, as in Kong's
own ``schema.lua`` files. Plain data: importing it costs nothing on the plugin server's start.
"""

from __future__ import annotations

from typing import Any

from creditgate.core import fields as record
from creditgate.core.fields import Field as Field  # re-exported
from creditgate.core.fields import Fields as Fields  # re-exported
from creditgate.core.redis_settings import REDIS_FIELDS

# What one request may cost, by the flat cost or by a cost rule.
COST_BOUNDS = [0, 1_000_000_000]

FIELDS: list[dict[str, Field]] = [
    {
        "cost": {
            "type": "integer",
            "default": 1,
            "required": True,
            "between": COST_BOUNDS,
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
            "default": "urn:credit-gate:problem:",
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
        "bypass_witness": {
            "type": "boolean",
            "default": False,
            "required": True,
            "description": "Mark each request to the upstream, before charging, with the charge's "
            "token (X-Credit-Gate-Witness; blanked once the gate lets it through), so that a charge "
            "whose request reached the fail-closed dead end instead (the plugin server died after "
            "charging) is given back by credit-gate serve: see docs/fail-closed.md. One more PDK "
            "call per request.",
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
            "path match sets the cost. In a path, * is one segment and ** anything. With a path in any "
            "rule, a request path longer than 8192 characters is refused with 414 path_too_long, "
            "nothing charged.",
            "elements": {
                "type": "record",
                "fields": [
                    {
                        "methods": {
                            "type": "array",
                            "default": [],
                            "required": True,
                            "elements": {
                                "type": "string",
                                "one_of": [
                                    "CONNECT",
                                    "DELETE",
                                    "GET",
                                    "HEAD",
                                    "OPTIONS",
                                    "PATCH",
                                    "POST",
                                    "PUT",
                                    "TRACE",
                                ],
                            },
                            "description": "HTTP methods the rule applies to; empty means any.",
                        }
                    },
                    {
                        "path": {
                            "type": "string",
                            "description": "Path pattern matched against the whole normalized path, "
                            "in time linear in the path, e.g. /v1/models/*.",
                        }
                    },
                    {
                        "cost": {
                            "type": "integer",
                            "required": True,
                            "between": COST_BOUNDS,
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
            "from the same consumer on the same route at the same cost, is not charged again (it is "
            "answered as the first request while that request would still be allowed); 0 turns it off.",
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


def declared(name: str, fields: Fields = FIELDS) -> Field:
    """The declaration of the field ``name`` of a record (the plugin's config by default)."""
    return record.declared(name, fields)


def default(name: str, fields: Fields = FIELDS) -> Any:
    """A field's default, as Kong fills it in."""
    return record.default(name, fields)


def between(name: str, fields: Fields = FIELDS) -> tuple[int, int]:
    """A number field's inclusive bounds."""
    return record.between(name, fields)


COST_RULE_FIELDS: Fields = declared("costs")["elements"]["fields"]
# The HTTP methods a cost rule may name.
METHODS = frozenset(declared("methods", COST_RULE_FIELDS)["elements"]["one_of"])
# The problem types of an instance whose config could not be parsed: answered 500 misconfigured
# under the default base, as no other is known.
PROBLEM_TYPE_BASE: str = default("problem_type_base")
