"""The API's reference (/docs/) and the headers of every answer.

Off by default; with ``docs`` on, Swagger UI is served from the package's own pinned files under the
dashboard's Content-Security-Policy, and in a real browser (Debian's Chromium, driven by Playwright)
it loads nothing from elsewhere, breaks no rule of the policy, and its "Authorize" sends the token to
this service as a bearer token. Every answer, page or not, forbids framing and sniffing.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from importlib.resources import files
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import sync_playwright

from creditgate.core.config import RedisSettings
from creditgate.service.dashboard import POLICY
from tests.service_support import ADMIN_TOKEN, READ_TOKEN, Running, running_service

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

CHROMIUM = "/usr/bin/chromium"
STATIC = files("creditgate.service") / "static"


@pytest.fixture
def with_docs(settings: RedisSettings) -> Iterator[Running]:
    with running_service(settings, docs=True) as running:
        yield running


def test_the_reference_is_off_by_default(settings: RedisSettings) -> None:
    with running_service(settings) as api:
        for path in ("/docs", "/docs/", "/docs/swagger-ui-bundle.js", "/redoc", "/docs/oauth2-redirect"):
            answer = api.call("GET", path, token=None)
            assert answer.status_code == 404, path
        assert api.call("GET", "/openapi.json", token=None).status_code == 200


def test_every_answer_forbids_framing_and_sniffing(settings: RedisSettings) -> None:
    with running_service(settings) as api:
        answers = [
            api.call("GET", "/healthz", token=None),
            api.call("GET", "/readyz", token=None),
            api.call("GET", "/openapi.json", token=None),
            api.call("GET", "/v1/plans", token=READ_TOKEN),
            api.call("GET", "/v1/plans", token=None),  # 401
            api.call("GET", "/v1/accounts/nobody"),  # 404
            api.call("GET", "/nothing-here", token=None),  # 404 of the router
            api.call("DELETE", "/healthz", token=None),  # 405
            api.call("GET", "/metrics", token=READ_TOKEN),
            api.call("GET", "/v1/export", token=READ_TOKEN),  # a stream
            api.call("GET", "/dashboard/", token=None),
        ]
        for answer in answers:
            where = f"{answer.request.method} {answer.url} {answer.status_code}"
            assert answer.headers["X-Frame-Options"] == "DENY", where
            assert answer.headers["X-Content-Type-Options"] == "nosniff", where
            assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"], where
        assert answers[-1].headers["Content-Security-Policy"] == POLICY  # a page keeps its own policy


def test_the_reference_is_served_from_pinned_files_under_the_dashboards_policy(with_docs: Running) -> None:
    from creditgate.service.dashboard import DOCS_FILES

    moved = with_docs.call("GET", "/docs", token=None, allow_redirects=False)
    assert moved.status_code == 308 and moved.headers["Location"] == "docs/"
    page = with_docs.call("GET", "/docs/", token=None)
    assert page.status_code == 200 and page.headers["Content-Security-Policy"] == POLICY
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Referrer-Policy"] == "no-referrer"
    # Every script and style is the package's own, named relatively, and pinned by its hash.
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(sources) == ["data:,", "docs.js", "swagger-ui-bundle.js", "swagger-ui.css"]
    for name, integrity in re.findall(
        r'(?:src|href)="([^"]+)"\s+(?:defer\s+)?integrity="([^"]+)"', page.text
    ):
        served = with_docs.call("GET", f"/docs/{name}", token=None)
        assert served.status_code == 200 and served.headers["Content-Security-Policy"] == POLICY
        assert served.content == (STATIC / "vendor" / name).read_bytes()
        digest = base64.b64encode(hashlib.sha384(served.content).digest()).decode()
        assert integrity == f"sha384-{digest}", name
    assert len(re.findall("integrity=", page.text)) == 2
    for name in DOCS_FILES:
        assert with_docs.call("GET", f"/docs/{name}", token=None).status_code == (
            404 if name == "docs.html" else 200
        )
    assert with_docs.call("GET", "/docs/index.html", token=None).status_code == 404
    assert with_docs.call("GET", "/docs/..%2Fdashboard.js", token=None).status_code == 404


def test_in_a_browser_the_reference_loads_only_its_own_files_and_authorize_sends_the_bearer_token(
    with_docs: Running,
) -> None:
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            requested: list[str] = []
            page.on(
                "console", lambda message: errors.append(message.text) if message.type == "error" else None
            )
            page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
            page.on("request", lambda request: requested.append(request.url))

            page.goto(with_docs.url + "/docs/")
            page.wait_for_selector(".swagger-ui .info .title")
            assert "credit-gate" in page.inner_text(".swagger-ui .info .title")
            page.click("button.authorize")
            page.fill(".auth-container input", READ_TOKEN)
            page.click(".auth-btn-wrapper button.authorize")
            page.click(".auth-btn-wrapper button.btn-done")

            operation = "#operations-plans-list_plans_v1_plans_get"
            page.click(f"{operation} .opblock-summary")
            page.click(f"{operation} button.try-out__btn")
            with page.expect_request(lambda r: r.url.endswith("/v1/plans")) as call:
                page.click(f"{operation} button.execute")
            assert call.value.headers["authorization"] == f"Bearer {READ_TOKEN}"
            page.wait_for_selector(f"{operation} .live-responses-table tbody .response-col_status")
            assert (
                page.inner_text(f"{operation} .live-responses-table tbody .response-col_status").strip()
                == "200"
            )
        finally:
            browser.close()
    assert errors == []  # a Content-Security-Policy violation is a console error
    origin = urlsplit(with_docs.url).netloc
    assert {urlsplit(url).netloc for url in requested if not url.startswith("data:")} == {origin}
    assert ADMIN_TOKEN not in " ".join(requested)
