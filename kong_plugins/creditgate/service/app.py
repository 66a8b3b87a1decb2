"""The application: the routes, the webhooks and /metrics put together, every failure a problem body."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from creditgate.errors import CreditGateError
from creditgate.service import problems, routes
from creditgate.service.state import Service

log = logging.getLogger("creditgate.service")

DESCRIPTION = """The operators' API of credit-gate: plans, subscriptions, credits, the ledger, usage and
export; payments in from Stripe and other billing systems; metrics for Prometheus.

Authenticate with `Authorization: Bearer <token>`: a read-only token reads, a read-write token also
writes. Every error is an RFC 9457 problem body (`application/problem+json`) with a stable `code`.
Writes that move credit need an `Idempotency-Key` header: the same key applies once, also when
retries race. Times are RFC 3339 UTC (or Unix seconds in); credits are integers."""


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
    return problems.problem_response(
        500, "internal_error", "the service failed; its log says why", instance=request.url.path
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The event delivery thread runs while the application does (when event URLs are configured)."""
    dispatcher = app.state.service.extra.get("dispatcher")
    if dispatcher is not None:
        dispatcher.start()
    try:
        yield
    finally:
        if dispatcher is not None:
            dispatcher.stop()


def create_app(service: Service) -> FastAPI:
    app = FastAPI(
        lifespan=lifespan,
        title="credit-gate",
        version=version(),
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.service = service
    from creditgate.service.paths import KeepEncodedSlashes

    app.add_middleware(KeepEncodedSlashes)
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

    from creditgate.service import dashboard, totals

    app.include_router(totals.router)
    app.include_router(dashboard.router)

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        """The process answers (no Redis call, no token)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"], responses=routes._problems(503))
    def readyz(request: Request) -> dict[str, Any]:
        """Redis answers (no token): 503 with Retry-After while it does not."""
        current: Service = request.app.state.service
        current.admin.store.plan_names()
        return {"status": "ready"}

    return app
