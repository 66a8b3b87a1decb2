"""The operators' dashboard: a static page, shipped in the package, that reads the API with a token.

The page itself carries no data and needs no token: it asks for one, keeps it in the tab's
sessionStorage and sends it as ``Authorization: Bearer`` on each call to ``/v1``, so the token is never
in a URL, a log line or a cookie sent by the browser on its own. A strict Content-Security-Policy lets
the page run only its own scripts and talk only to this service (no inline script, nothing from another
origin), which is what keeps a token in sessionStorage out of reach of injected markup.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.resources import files

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
VENDORED = {"chart.umd.min.js", "LICENSE.chart.js.txt"}

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
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


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
    return Response(_content(name), media_type=FILES[name], headers=headers)


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
