"""``schemas/problem.schema.json``: the problem body's JSON Schema, its reason codes and statuses
generated from ``creditgate.core.decision.Reason``.

``python -m creditgate.core.problem_schema`` prints it (``make schema`` rewrites the file); a test fails
when the committed file differs, so a reason added to the enum reaches the schema clients validate
against without a hand edit. The rest of the body's shape is written here, next to nothing else.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from creditgate.core.decision import PAYMENT_REASONS, PAYMENT_REQUIRED, Reason


def _nullable(kind: str, **more: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **more}


def to_json_schema() -> dict[str, Any]:
    """The JSON Schema of every problem body the gate (or Kong, for ``gate_unavailable``) answers."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:credit-gate:schema:problem",
        "title": "credit-gate problem details (RFC 9457)",
        "description": "The application/problem+json body of every response credit-gate ends a request with.",
        "type": "object",
        "required": ["type", "title", "status", "detail", "reason"],
        "properties": {
            "type": {
                "type": "string",
                "format": "uri",
                "description": "A URI per reason: problem_type_base followed by the reason code.",
            },
            "title": {"type": "string"},
            "status": {"enum": sorted({reason.status for reason in Reason})},
            "detail": {
                "type": "string",
                "minLength": 1,
                "description": "What happened and what to do, in plain words.",
            },
            "reason": {
                "enum": [reason.value for reason in Reason],
                "description": "A stable code. gate_unavailable is answered by Kong itself "
                "(request-termination) in a fail-closed deployment, when the plugin could not run.",
            },
            "plan": _nullable("string"),
            "cost": {"type": "integer", "minimum": 0},
            "balance": {"type": "integer", "minimum": 0},
            "allowance_remaining": {"type": "integer", "minimum": 0},
            "period_end": _nullable("string", format="date-time"),
            "payment_url": _nullable("string", format="uri"),
            "plans": {
                "type": "array",
                "items": {"type": "string"},
                "description": "With plan_not_entitled: the plans that include the route.",
            },
        },
        "allOf": [
            {
                "if": {"properties": {"status": {"const": PAYMENT_REQUIRED}}},
                "then": {
                    "required": [
                        "plan",
                        "cost",
                        "balance",
                        "allowance_remaining",
                        "period_end",
                        "payment_url",
                    ]
                },
            },
            {
                "if": {"properties": {"reason": {"const": Reason.PLAN_NOT_ENTITLED.value}}},
                "then": {"required": ["plans"]},
            },
            {
                "if": {"properties": {"status": {"const": PAYMENT_REQUIRED}}},
                "then": {"properties": {"reason": {"enum": [reason.value for reason in PAYMENT_REASONS]}}},
            },
        ],
    }


def main() -> None:
    json.dump(to_json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
