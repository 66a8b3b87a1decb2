"""Nothing secret reaches a read-only token, a log line or an anonymous caller: event receivers' URLs are
shown redacted wherever they appear (the dead letters, a replay's answer and error, the delivery log,
a refused setting), /readyz says ready or not and no more, and a token is taken whole, whatever
characters it holds. Against the running service (uvicorn, real HTTP), real receivers and a real Redis.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.policy import ChargeRequest
from creditgate.errors import ConfigError
from creditgate.service.events import EventSettings
from creditgate.store import events as stored
from creditgate.store.store import RedisStore
from tests.redis_servers import RedisServer, free_port, wait_until
from tests.service.test_events import SECRET, event_env, setup_accounts
from tests.service_support import ADMIN_TOKEN, READ_TOKEN, running_service

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

PASSWORD = "pw-Secret-4711"
PATH_SECRET = "PathSecret0815"
QUERY_SECRET = "q-Secret-2342"
SECRETS = (PASSWORD, PATH_SECRET, QUERY_SECRET)


def leaks(text: str) -> list[str]:
    """The secrets ``text`` shows, as written or percent-encoded."""
    return [s for s in SECRETS if s in text or quote(s, safe="") in text]


@contextmanager
def refusing_receiver() -> Iterator[dict[str, Any]]:
    """A real HTTP receiver that answers 503 until told to take events (``state["take"] = True``)."""
    state: dict[str, Any] = {"take": False, "got": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            state["got"] += 1
            self.send_response(204 if state["take"] else 503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["port"] = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def secret_url(port: int) -> str:
    return f"http://hook:{PASSWORD}@127.0.0.1:{port}/hooks/{PATH_SECRET}?token={QUERY_SECRET}&source=gate"


def test_receiver_urls_are_shown_with_scheme_host_port_and_plain_words_only() -> None:
    from creditgate.service.events import redacted_text, redacted_url

    assert redacted_url(secret_url(8080)) == "http://***@127.0.0.1:8080/hooks/***?token=***&source=***"
    assert redacted_url("https://hooks.slack.com/services/T0AB/B0CD/xYz123") == (
        "https://hooks.slack.com/services/***/***/***"
    )
    assert redacted_url("https://[::1]:8443/v1/credit-gate/events#frag") == (
        "https://[::1]:8443/v1/credit-gate/events#***"
    )
    assert redacted_url("https://example.com/hook?just-a-secret-value") == "https://example.com/hook?***"
    assert redacted_url("http://host:notaport/x") == "***"
    # An error quoting the URL, whole or as an HTTP client writes its path, keeps none of its secrets.
    error = f"Max retries exceeded with url: /hooks/{PATH_SECRET}?token={QUERY_SECRET} ({secret_url(1)})"
    shown = redacted_text(error, secret_url(1))
    assert leaks(shown) == [] and "url: /hooks/***?token=***" in shown and "127.0.0.1:1" in shown


def test_a_refused_receiver_setting_names_the_url_without_its_secrets() -> None:
    with pytest.raises(ConfigError) as refused:
        EventSettings.load(
            {
                "CREDIT_GATE_EVENT_URLS": f"ftp://u:{PASSWORD}@h/{PATH_SECRET}",
                "CREDIT_GATE_EVENT_SECRET": SECRET,
            }
        )
    assert "not an http" in str(refused.value) and leaks(str(refused.value)) == []


def test_dead_letters_replays_and_delivery_logs_never_show_a_receivers_secrets(
    settings: RedisSettings, store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    closed = free_port()  # nothing listens: the client's error quotes the URL
    with refusing_receiver() as receiver:
        urls = f"{secret_url(receiver['port'])},{secret_url(closed)}"
        env = event_env(urls, CREDIT_GATE_EVENT_ATTEMPTS="2")
        with running_service(settings, env) as api:
            setup_accounts(api, ["acme"])
            assert store.charge(ChargeRequest("acme", 60)).allowed  # balance.low
            wait_until(
                lambda: len(api.call("GET", "/v1/events/dead-letters").json()["dead_letters"]) == 2,
                20,
                "a dead letter for each receiver",
            )
            listed = api.call("GET", "/v1/events/dead-letters", token=READ_TOKEN)
            assert listed.status_code == 200 and leaks(listed.text) == []
            letters = {d["url"]: d for d in listed.json()["dead_letters"]}
            refusing = letters[f"http://***@127.0.0.1:{receiver['port']}/hooks/***?token=***&source=***"]
            unreachable = letters[f"http://***@127.0.0.1:{closed}/hooks/***?token=***&source=***"]
            assert refusing["error"] == "HTTP 503"
            assert unreachable["error"].startswith("ConnectionError") and "/hooks/***" in unreachable["error"]

            # A read-only token filters by the receiver as shown; the URL as configured matches nothing,
            # or each request would test a guess of its secret.
            def named(receiver: str) -> list[str]:
                answer = api.call(
                    "GET", "/v1/events/dead-letters", token=READ_TOKEN, params={"receiver": receiver}
                )
                return [d["id"] for d in answer.json()["dead_letters"]]

            assert named(unreachable["url"]) == [unreachable["id"]]
            assert named(secret_url(closed)) == []
            # The id is no unkeyed hash of the URL, against which its secret could be guessed offline.
            event = unreachable["event"]["id"]
            assert (
                unreachable["id"]
                != hashlib.sha256(f"{event}\n{secret_url(closed)}".encode()).hexdigest()[:24]
            )

            failed = api.call(
                "POST", f"/v1/events/dead-letters/{unreachable['id']}/replay", token=ADMIN_TOKEN
            )
            assert failed.status_code == 502 and failed.json()["code"] == "delivery_failed"
            assert leaks(failed.text) == []
            receiver["take"] = True
            replayed = api.call("POST", f"/v1/events/dead-letters/{refusing['id']}/replay", token=ADMIN_TOKEN)
            assert replayed.status_code == 200 and leaks(replayed.text) == []
            assert replayed.json()["url"] == refusing["url"]
    delivery_log = "\n".join(r.getMessage() for r in caplog.records)
    assert "given up after 2 attempts" in delivery_log and "/hooks/***" in delivery_log
    assert leaks(delivery_log) == []


def test_a_dead_letter_kept_by_an_earlier_version_is_shown_redacted(
    settings: RedisSettings, store: RedisStore
) -> None:
    url = secret_url(9)
    stored.put_dead_letter(
        store,
        {
            "id": "0" * 24,
            "event": {"id": "evt_old", "type": "balance.low", "account": "acme", "at": "", "data": {}},
            "url": url,
            "attempts": 10,
            "error": f"ConnectionError: Max retries exceeded with url: /hooks/{PATH_SECRET}?t={QUERY_SECRET}",
            "dead_at": "2026-01-01T00:00:00Z",
        },
    )
    with running_service(settings) as api:
        listed = api.call("GET", "/v1/events/dead-letters", token=READ_TOKEN)
        assert listed.status_code == 200 and leaks(listed.text) == []
        (letter,) = listed.json()["dead_letters"]
        assert letter["url"] == "http://***@127.0.0.1:9/hooks/***?token=***&source=***"


@pytest.mark.server
def test_readyz_says_ready_or_not_and_nothing_about_redis(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    port = server.port
    settings = RedisSettings(host="127.0.0.1", port=port, connect_timeout=300, read_timeout=300)
    try:
        with running_service(settings) as api:
            assert api.call("GET", "/readyz", token=None).json() == {"status": "ready"}
            server.stop()
            answer = api.call("GET", "/readyz", token=None)
            assert answer.status_code == 503 and int(answer.headers["Retry-After"]) >= 1
            body = answer.json()
            assert (
                body["code"] == "store_unavailable" and body["detail"] == "not ready: Redis does not answer"
            )
            assert str(port) not in answer.text and "127.0.0.1" not in answer.text
            assert set(body) == {"type", "title", "status", "detail", "code", "instance"}
    finally:
        server.stop()


WHOLE = "read-token-0123456789#and-the-rest"
PREFIX = WHOLE.split("#")[0]


def test_a_token_holding_a_hash_sign_is_taken_whole_from_the_environment(settings: RedisSettings) -> None:
    env = {
        "CREDIT_GATE_ADMIN_TOKENS": ADMIN_TOKEN,
        "CREDIT_GATE_READ_TOKENS": f"{WHOLE}, other-token-0123456789",
    }
    with running_service(settings, env) as api:
        assert api.call("GET", "/v1/plans", token=WHOLE).status_code == 200
        assert api.call("GET", "/v1/plans", token="other-token-0123456789").status_code == 200
        refused = api.call("GET", "/v1/plans", token=PREFIX)
        assert refused.status_code == 401 and refused.json()["code"] == "unauthenticated"


def test_token_files_have_comment_lines_and_tokens_with_hash_signs_and_any_characters(
    settings: RedisSettings, tmp_path: Path
) -> None:
    tokens = tmp_path / "admin-tokens"
    unicode_token = "tök-en-0123456789-ünïcode"
    tokens.write_text(f"# rotated weekly\n  # indented comment\n{WHOLE}\n{unicode_token}\n", encoding="utf-8")
    with running_service(settings, {}, admin_token_files=(tokens,)) as api:
        assert api.call("GET", "/v1/plans", token=WHOLE).status_code == 200
        assert api.call("GET", "/v1/plans", token=PREFIX).status_code == 401
        assert api.call("GET", "/v1/plans", token="# rotated weekly").status_code == 401
        # Sent as its UTF-8 bytes, as a client sends a header it was given.
        header = b"Bearer " + unicode_token.encode()
        answer = api.session.get(api.url + "/v1/plans", headers={"Authorization": header}, timeout=10)
        assert answer.status_code == 200
