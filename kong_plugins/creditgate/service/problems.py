"""RFC 9457 problem bodies (``application/problem+json``) with a stable ``code`` per kind of failure.

The codes follow the CLI's exit codes, so a script moving from the CLI to the API meets the same
vocabulary: ``invalid_input`` (exit 1), ``not_found`` (2), ``conflict`` and ``idempotency_error`` (3),
``store_unavailable`` (4), plus what only HTTP has (authentication, body size, content type, signatures).
Bad data in Redis is not an outage: ``data_invalid`` (500, the log names the key), never a 503 that
tells a client to retry what will fail the same way until an operator repairs the key.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# The admin API's problems are another vocabulary under the plugin's default problem type base.
from creditgate.core.schema import PROBLEM_TYPE_BASE
from creditgate.errors import (
    ConfigError,
    Conflict,
    CreditGateError,
    IdempotencyKeyReused,
    InvalidDocument,
    NotFound,
    StoreDataError,
    StoreError,
)

log = logging.getLogger("creditgate.service")

MEDIA_TYPE = "application/problem+json"
STORE_RETRY_AFTER_S = 1  # Redis failed and no breaker says for how long: ask again in a second

TITLES = {
    "invalid_input": "Invalid input",
    "malformed_body": "Malformed body",
    "not_found": "Not found",
    "conflict": "Conflict",
    "store_unavailable": "Store unavailable",
    "data_invalid": "Data invalid",
    "unauthenticated": "Authentication required",
    "forbidden": "Not allowed with this token",
    "payload_too_large": "Body too large",
    "unsupported_media_type": "Unsupported media type",
    "idempotency_key_required": "Idempotency-Key required",
    "idempotency_error": "Idempotency-Key reused for another change",
    "bad_signature": "Bad signature",
    "webhook_not_configured": "Webhook not configured",
    "events_not_configured": "Events not configured",
    "delivery_failed": "Delivery failed",
    "method_not_allowed": "Method not allowed",
    "internal_error": "Internal error",
}
CODES = tuple(TITLES)


class ApiProblem(Exception):
    """Raised by a route to end the request with a problem body."""

    def __init__(
        self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        assert code in TITLES, code
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_body(status: int, code: str, detail: str, instance: str = "", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": TITLES[code],
        "status": status,
        "detail": " ".join(detail.split()),
        "code": code,
    }
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extra.items() if v not in ("", None)})
    return body


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str = "",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse(
        problem_body(status, code, detail, instance, **extra),
        status_code=status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )


def from_error(error: CreditGateError) -> ApiProblem:
    """The problem for an error the operators' API raised: the same classes the CLI maps to exit codes."""
    if isinstance(error, StoreDataError):  # Redis answered: retrying changes nothing
        # The message names the key (or account) and the field, never the value found there.
        return ApiProblem(
            500,
            "data_invalid",
            f"{error}; nothing was changed, and a retry fails the same way until the data is repaired",
        )
    if isinstance(error, StoreError):
        retry = max(STORE_RETRY_AFTER_S, math.ceil(error.retry_after_ms / 1000))
        return ApiProblem(
            503,
            "store_unavailable",
            f"Redis is unavailable ({error}); nothing is known to have changed unless the write carried "
            "an Idempotency-Key, which makes retrying it safe",
            headers={"Retry-After": str(retry)},
        )
    if isinstance(error, NotFound):
        return ApiProblem(404, "not_found", str(error))
    if isinstance(error, IdempotencyKeyReused):  # Stripe's name for the same refusal
        return ApiProblem(409, "idempotency_error", str(error), ledger_id=error.first_ledger_id)
    if isinstance(error, Conflict):
        return ApiProblem(409, "conflict", str(error))
    if isinstance(error, InvalidDocument):
        where = error.where
        return ApiProblem(422, "invalid_input", str(error), field=where)
    if isinstance(error, ConfigError):
        return ApiProblem(422, "invalid_input", str(error))
    return ApiProblem(500, "internal_error", str(error))


async def on_problem(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiProblem)
    return problem_response(
        error.status,
        error.code,
        error.detail,
        instance=request.url.path,
        headers=error.headers,
        **error.extra,
    )


async def on_creditgate_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, CreditGateError)
    if isinstance(error, StoreDataError):
        log.error(
            "credit-gate service: %s %s: bad data in Redis (key %s): %s",
            request.method, request.url.path, error.key or "?", error,
        )  # fmt: skip
    return await on_problem(request, from_error(error))


async def on_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "header", "body"))
    detail = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid"))
    return problem_response(422, "invalid_input", detail, instance=request.url.path, field=where)


async def on_http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "invalid_input")
    detail = "no such endpoint; /openapi.json lists them" if error.status_code == 404 else str(error.detail)
    return problem_response(
        error.status_code, code, detail, instance=request.url.path, headers=dict(error.headers or {})
    )
