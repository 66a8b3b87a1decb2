"""What every request of one running service shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

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


def reader(request: Request) -> Service:
    """A dependency: the caller holds a read-only or read-write token."""
    service = service_of(request)
    service.auth.require(request, Access.READ)
    return service


def writer(request: Request) -> Service:
    """A dependency: the caller holds a read-write token."""
    service = service_of(request)
    service.auth.require(request, Access.WRITE)
    return service
