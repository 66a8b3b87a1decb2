"""The operators' dashboard: a static page, shipped in the package, that reads the API with a token.

The page itself carries no data and needs no token: it asks for one, keeps it in the tab's
sessionStorage and sends it as ``Authorization: Bearer`` on each call to ``/v1``, so the token is never
in a URL, a log line or a cookie sent by the browser on its own. A strict Content-Security-Policy lets
the page run only its own scripts and talk only to this service (no inline script, nothing from another
origin), which is what keeps a token in sessionStorage out of reach of injected markup.

The API's reference (Swagger UI at ``/docs/``) is served the same way, from vendored files under the
same policy, and only when the service is started with ``--docs``. Every other response carries the
headers that forbid framing and sniffing (``SecurityHeaders``).
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from creditgate.service.problems import ApiProblem

# The only files served, by name: nothing else under static/ is reachable, and no path is joined.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "chart.umd.min.js": "text/javascript; charset=utf-8",
    "LICENSE.chart.js.txt": "text/plain; charset=utf-8",
}
# The API's reference: Swagger UI 5.36.0 from swagger-ui-dist (Apache-2.0), pinned by the SRI hashes
# in docs.html (tests/service/test_docs.py checks them against the files).
DOCS_FILES = {
    "docs.html": "text/html; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "LICENSE.swagger-ui.txt": "text/plain; charset=utf-8",
    "NOTICE.swagger-ui.txt": "text/plain; charset=utf-8",
    "swagger-ui-bundle.js.LICENSE.txt": "text/plain; charset=utf-8",
}
MEDIA_TYPES = {**FILES, **DOCS_FILES}
VENDORED = {
    "chart.umd.min.js",
    "LICENSE.chart.js.txt",
    "swagger-ui-bundle.js",
    "swagger-ui.css",
    "LICENSE.swagger-ui.txt",
    "NOTICE.swagger-ui.txt",
    "swagger-ui-bundle.js.LICENSE.txt",
}

POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
# Every response: never framed (clickjacking), never sniffed into another type, no referrer sent on.
BASE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# The API's own answers (JSON, problem bodies, metrics, exports) run nothing and load nothing.
API_HEADERS = {**BASE_HEADERS, "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"}
# The pages (the dashboard, the API's reference): their own files only, and calls to this service.
HEADERS = {**BASE_HEADERS, "Content-Security-Policy": POLICY, "Cache-Control": "no-cache"}


class SecurityHeaders:
    """ASGI middleware: ``API_HEADERS`` on every response that has not set its own (the pages have)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in API_HEADERS.items()]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                added = [(k, v) for k, v in self.headers if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, with_headers)


router = APIRouter(include_in_schema=False)
docs_router = APIRouter(include_in_schema=False)


@cache
def _content(name: str) -> bytes:
    folder = files("creditgate.service") / "static"
    if name in VENDORED:
        folder = folder / "vendor"
    return (folder / name).read_bytes()


@cache
def _etag(name: str) -> str:
    return '"' + hashlib.sha256(_content(name)).hexdigest()[:32] + '"'


def _file(request: Request, name: str) -> Response:
    """The file, or 304 when the browser holds this version (no-cache: it asks each time, cheaply)."""
    headers = {**HEADERS, "ETag": _etag(name)}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return Response(_content(name), media_type=MEDIA_TYPES[name], headers=headers)


@router.get("/dashboard")
def dashboard_redirect() -> RedirectResponse:
    """The page's relative links need the trailing slash."""
    return RedirectResponse("dashboard/", status_code=308)


@router.get("/dashboard/")
def dashboard_page(request: Request) -> Response:
    return _file(request, "index.html")


@router.get("/dashboard/{name}")
def dashboard_file(request: Request, name: str) -> Response:
    if name not in FILES:
        raise ApiProblem(404, "not_found", "no such file of the dashboard")
    return _file(request, name)


# The API's reference, mounted only with --docs (create_app)


@docs_router.get("/docs")
def docs_redirect() -> RedirectResponse:
    """The page's relative links need the trailing slash."""
    return RedirectResponse("docs/", status_code=308)


@docs_router.get("/docs/")
def docs_page(request: Request) -> Response:
    return _file(request, "docs.html")


@docs_router.get("/docs/{name}")
def docs_file(request: Request, name: str) -> Response:
    if name not in DOCS_FILES or name == "docs.html":
        raise ApiProblem(404, "not_found", "no such file of the API's reference")
    return _file(request, name)
