"""The application: the routes, the webhooks and /metrics put together, every failure a problem body."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from creditgate.errors import CreditGateError, StoreError
from creditgate.service import problems, routes
from creditgate.service.dashboard import API_HEADERS, SecurityHeaders
from creditgate.service.state import Service

log = logging.getLogger("creditgate.service")

DESCRIPTION = """The operators' API of credit-gate: plans, subscriptions, credits, the ledger, usage and
export; payments in from Stripe and other billing systems; metrics for Prometheus.

Authenticate with `Authorization: Bearer <token>` (the `bearer` scheme): a read-only token reads, a
read-write token also writes. Every error is an RFC 9457 problem body (`application/problem+json`)
with a stable `code`. Writes that move credit need an `Idempotency-Key` header: the same key applies
once, also when retries race. Times are RFC 3339 UTC (or Unix seconds in); credits are integers."""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("credit-gate")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0"


async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
    log.error(
        "credit-gate service: %s %s failed: %r", request.method, request.url.path, error, exc_info=error
    )
    # Answered outside the middleware (Starlette's ServerErrorMiddleware): the headers are given here.
    return problems.problem_response(
        500,
        "internal_error",
        "the service failed; its log says why",
        instance=request.url.path,
        headers=API_HEADERS,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The event delivery thread (when event URLs are configured) and the usage totals' builder
    (service/totals.py) run while the application does."""
    threads = [app.state.service.extra.get(name) for name in ("dispatcher", "totals_builder")]
    for thread in threads:
        if thread is not None:
            thread.start()
    try:
        yield
    finally:
        for thread in threads:
            if thread is not None:
                thread.stop()


# The webhooks (webhooks.py) read and check their bodies themselves, so no dependency says what they
# can answer: it is listed here.
WEBHOOK_RESPONSES = {
    "/v1/webhooks/stripe": (404, 413, 500, 503),
    "/v1/webhooks/generic": (404, 413, 422, 500, 503),
}
PROBLEM_SCHEMA = {"schema": {"$ref": "#/components/schemas/Problem"}}
FASTAPI_422 = "#/components/schemas/HTTPValidationError"


def document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI document, mended where it says what the service does not: the 422 FastAPI adds
    to every route with parameters (its HTTPValidationError) is dropped, since each route lists its own
    422, a problem body, where it can give one; problem bodies are described as sent,
    ``application/problem+json``; the webhooks list what they answer. tests/service/test_openapi.py
    holds each route's list against what it answers."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        for path, statuses in WEBHOOK_RESPONSES.items():
            listed = schema["paths"][path]["post"]["responses"]
            for status in statuses:
                listed[str(status)] = {"description": routes.PROBLEM_DESCRIPTIONS[status]}
                listed[str(status)]["content"] = {problems.MEDIA_TYPE: {}}
        for item in schema["paths"].values():
            for operation in item.values():
                responses = operation["responses"]
                if FASTAPI_422 in json.dumps(responses.get("422", {})):
                    del responses["422"]
                for response in responses.values():
                    content = response.get("content", {})
                    if problems.MEDIA_TYPE in content:
                        content.pop("application/json", None)
                        content[problems.MEDIA_TYPE] = PROBLEM_SCHEMA
        if FASTAPI_422 not in json.dumps(schema["paths"]):
            schemas = schema.get("components", {}).get("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(service: Service, *, docs: bool = False) -> FastAPI:
    """The application; ``docs`` serves the API's reference (Swagger UI, vendored) at ``/docs/``."""
    app = FastAPI(
        lifespan=lifespan,
        title="credit-gate",
        version=version(),
        description=DESCRIPTION,
        docs_url=None,  # FastAPI's own pages load Swagger UI and ReDoc from a CDN: never served
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.service = service
    app.openapi = lambda: document(app)  # type: ignore[method-assign]
    from creditgate.service.paths import KeepEncodedSlashes

    app.add_middleware(KeepEncodedSlashes)
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(problems.ApiProblem, problems.on_problem)
    app.add_exception_handler(CreditGateError, problems.on_creditgate_error)
    app.add_exception_handler(RequestValidationError, problems.on_validation_error)
    app.add_exception_handler(StarletteHTTPException, problems.on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.include_router(routes.router)

    from creditgate.service import events, metrics, webhooks

    app.include_router(webhooks.router)
    app.include_router(events.router)
    app.include_router(metrics.router)

    from creditgate.service import dashboard, totals, witness

    app.include_router(totals.router)
    app.include_router(witness.router)
    app.include_router(dashboard.router)
    if docs:
        app.include_router(dashboard.docs_router)

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        """The process answers (no Redis call, no token)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"], responses=routes._problems(503))
    def readyz(request: Request) -> Any:
        """Redis answers (no token): 503 with Retry-After while it does not. Says ready or not, no more:
        why not (the Redis address, its error) is for the service's log, not for anyone who asks."""
        current: Service = request.app.state.service
        try:
            current.admin.store.plan_names()
        except StoreError as error:
            log.warning("credit-gate service: not ready: %s", error)
            return problems.problem_response(
                503,
                "store_unavailable",
                "not ready: Redis does not answer",
                instance=request.url.path,
                headers={"Retry-After": str(problems.STORE_RETRY_AFTER_S)},
            )
        return {"status": "ready"}

    return app
