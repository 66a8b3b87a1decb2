"""What every request of one running service shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from creditgate.core.schema import default
from creditgate.ops.admin import Admin
from creditgate.service.auth import Access, Authenticator
from creditgate.service.body import DEFAULT_BODY_LIMIT


@dataclass
class Service:
    admin: Admin
    auth: Authenticator
    key_prefix: str = default("key_prefix")
    body_limit: int = DEFAULT_BODY_LIMIT
    extra: dict[str, Any] = field(default_factory=dict)


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


# Declares the bearer scheme in the OpenAPI document, on every route that takes a token, so that Swagger
# UI's "Authorize" and generated clients send it. It checks nothing (auto_error=False): the
# Authenticator does, with the problem bodies and constant-time comparison this API promises.
BEARER = HTTPBearer(
    scheme_name="bearer",
    description="A read-only token (reads) or a read-write token (reads and writes); see docs/service.md",
    auto_error=False,
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


def reader(request: Request, _declared: Bearer = None) -> Service:
    """A dependency: the caller holds a read-only or read-write token."""
    service = service_of(request)
    service.auth.require(request, Access.READ)
    return service


def writer(request: Request, _declared: Bearer = None) -> Service:
    """A dependency: the caller holds a read-write token."""
    service = service_of(request)
    service.auth.require(request, Access.WRITE)
    return service
