"""Running the service: settings checked, then uvicorn on the chosen address."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI

from creditgate.core.config import RedisSettings
from creditgate.core.schema import default
from creditgate.ops.admin import Admin
from creditgate.service.app import create_app
from creditgate.service.auth import Authenticator, Tokens, check_exposure
from creditgate.service.billing_map import WebhookSettings
from creditgate.service.events import Dispatcher, EventSettings
from creditgate.service.metrics import count_delivery, registry_for
from creditgate.service.state import Service
from creditgate.service.totals import TotalsBuilder

log = logging.getLogger("creditgate.service")


def build(
    settings: RedisSettings,
    *,
    host: str,
    prefix: str = default("key_prefix"),
    ledger_retention: int = default("ledger_retention"),
    admin_token_files: tuple[Path, ...] = (),
    read_token_files: tuple[Path, ...] = (),
    body_limit: int = 1 << 20,
    billing_map: Path | None = None,
    environ: dict[str, str] | None = None,
    docs: bool = False,
) -> tuple[FastAPI, str | None]:
    """The application and a warning to show (open access on loopback), or ConfigError. ``docs`` serves
    the API's reference at /docs/ (off by default: a page that takes a token is one more to keep)."""
    tokens = Tokens.load(admin_files=admin_token_files, read_files=read_token_files, environ=environ)
    warning = check_exposure(tokens, host)
    hooks = WebhookSettings.load(billing_map, environ)
    events = EventSettings.load(environ)
    admin = Admin.connect(settings, prefix, ledger_retention=ledger_retention)
    service = Service(
        admin=admin,
        auth=Authenticator(tokens, open_access=warning is not None),
        key_prefix=prefix,
        body_limit=body_limit,
        extra={"webhooks": hooks, "events": events},
    )
    registry_for(service)  # built before any thread counts into it
    builder = TotalsBuilder.from_env(service, environ)
    if builder is not None:
        service.extra["totals_builder"] = builder
    if events.urls:
        service.extra["dispatcher"] = Dispatcher(
            admin.store, events, count=lambda outcome: count_delivery(service, outcome)
        )
    return create_app(service, docs=docs), warning


def run(app: FastAPI, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, server_header=False)
