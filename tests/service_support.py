"""The HTTP service for the tests: the real application under uvicorn, on a free loopback port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
import uvicorn

from creditgate.core.config import RedisSettings
from creditgate.service.server import build
from tests.redis_servers import free_port, wait_until

ADMIN_TOKEN = "admin-token-0123456789abcdef"
READ_TOKEN = "read-token-0123456789abcdef"


@dataclass
class Running:
    url: str
    session: requests.Session

    def call(
        self, method: str, path: str, token: str | None = ADMIN_TOKEN, **kwargs: Any
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.session.request(method, self.url + path, headers=headers, timeout=10, **kwargs)


@contextmanager
def running_service(
    settings: RedisSettings, environ: dict[str, str] | None = None, **options: Any
) -> Iterator[Running]:
    env = {"CREDIT_GATE_ADMIN_TOKENS": ADMIN_TOKEN, "CREDIT_GATE_READ_TOKENS": READ_TOKEN}
    if environ is not None:
        env = environ
    app, _ = build(settings, host="127.0.0.1", environ=env, **options)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    session = requests.Session()
    session.trust_env = False  # loopback only, whatever proxy the environment names
    try:
        wait_until(lambda: session.get(url + "/healthz", timeout=1).ok, 15, "the service to answer")
        yield Running(url, session)
    finally:
        server.should_exit = True
        thread.join(10)
        session.close()
        app.state.service.admin.close()
