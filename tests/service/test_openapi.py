"""The OpenAPI document held against the running service: the bearer scheme it declares, and for every
operation the responses it lists are the ones the service gives.

Every operation is probed over real HTTP, on a real Redis, with what any client may send: no token, a
read-only token, a body of the wrong type, too big or not JSON, a bad parameter, a missing or bad
Idempotency-Key, and Redis stopped. Each status the service answers must be listed for the operation,
and each status listed must be one the probes provoke, or one that only a state these probes do not
make can give (an unknown name, a refusal by the current state, bad data in Redis, a receiver that
fails), each of which has its own test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import stripe

from creditgate.core.config import RedisSettings
from creditgate.service.webhooks import generic_signature
from tests.redis_servers import RedisServer
from tests.service.stripe_payloads import checkout_session
from tests.service_support import ADMIN_TOKEN, READ_TOKEN, Running, running_service

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

STRIPE_SECRET = "whsec_openapi_0123456789"
GENERIC_SECRET = "generic-openapi-0123456789"
TOKENS = {"CREDIT_GATE_ADMIN_TOKENS": ADMIN_TOKEN, "CREDIT_GATE_READ_TOKENS": READ_TOKEN}
CONFIGURED = {
    **TOKENS,
    "CREDIT_GATE_STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
    "CREDIT_GATE_WEBHOOK_SECRET": GENERIC_SECRET,
    "CREDIT_GATE_EVENT_URLS": "http://127.0.0.1:9/hooks",
    "CREDIT_GATE_EVENT_SECRET": "event-openapi-0123456789",
}
BILLING_MAP = "credits:\n  price_small: {credits: 1000, amount: 2000, currency: usd}\n"
BODY_LIMIT = 4096
# Statuses only a state these probes do not make can give; each has a test of its own (test_api.py,
# test_events.py, test_service_errors.py): an unknown name, a refusal by the state, bad data in Redis
# or an unexpected failure, a receiver that does not take a replayed event.
STATEFUL = {404, 409, 500, 502}
METHODS = ("get", "put", "post", "delete", "patch")
CUT = 0  # an answer cut short after its status was sent (a stream that failed): never a right answer


@dataclass
class Operation:
    method: str
    path: str
    spec: dict[str, Any]
    seen: set[int] = field(default_factory=set)

    @property
    def declared(self) -> set[int]:
        return {int(status) for status in self.spec["responses"]}

    @property
    def has_body(self) -> bool:
        return "requestBody" in self.spec

    def url(self, *, bad: bool = False) -> str:
        """The path with each parameter an unknown name (a dead letter's id has a pattern of its own), or
        with ``bad``, a value its pattern refuses."""
        path = self.path
        for parameter in self.spec.get("parameters", []):
            if parameter["in"] == "path":
                pattern = parameter["schema"].get("pattern", "")
                value = ("x" if bad else "0" * 24) if pattern else "nobody"
                path = path.replace("{" + parameter["name"] + "}", value)
        return path

    @property
    def patterned(self) -> bool:
        return any(p["in"] == "path" and "pattern" in p["schema"] for p in self.spec.get("parameters", []))

    def valid_body(self) -> bytes:
        """A body its schema accepts (its required properties, each the least value allowed)."""
        schema = self.spec["requestBody"]["content"]["application/json"]["schema"]
        if self.path == "/v1/kong/bypassed":  # Kong's log of a request at the dead end, marked
            mark = {"x-credit-gate-witness": "0123456789abcdef nobody"}
            return json.dumps([{"request": {"headers": mark}, "response": {"status": 503}}]).encode()
        if "properties" not in schema:  # a plan, a list of plans or {plans: [...]}
            return json.dumps({"name": "nobody"}).encode()
        body: dict[str, Any] = {}
        for name in schema.get("required", []):
            field = schema["properties"][name]
            if "enum" in field:
                body[name] = field["enum"][0]
            elif field.get("type") == "integer":
                body[name] = max(1, field.get("minimum", 1))
            elif field.get("type") == "boolean":
                body[name] = True
            else:
                body[name] = "nobody"  # a plan's name is the path's
        return json.dumps(body).encode()


def operations(document: dict[str, Any]) -> list[Operation]:
    return [
        Operation(method, path, spec)
        for path, item in document["paths"].items()
        for method, spec in item.items()
        if method in METHODS
    ]


def bad_value(schema: dict[str, Any]) -> str:
    """A value the parameter's schema, or the route's own parsing, refuses."""
    if "anyOf" in schema:
        schema = next(s for s in schema["anyOf"] if s.get("type") != "null")
    if schema.get("type") in ("integer", "boolean"):
        return "not-a-number"
    if schema.get("type") == "array":
        return "\x01"
    if "maxLength" in schema:
        return "x" * (int(schema["maxLength"]) + 1)
    return "not-a-time"


def signed(operation: Operation, payload: bytes) -> dict[str, str]:
    """The webhooks' own signatures over ``payload`` (they take no token)."""
    now = str(int(time.time()))
    if operation.path.endswith("/stripe"):
        header = stripe.WebhookSignature.generate_signature_header(
            payload.decode(), STRIPE_SECRET, timestamp=int(now)
        )
        return {"Stripe-Signature": header}
    return {"Webhook-Timestamp": now, "Webhook-Signature": generic_signature(GENERIC_SECRET, now, payload)}


def webhook_event(operation: Operation) -> bytes:
    if operation.path.endswith("/stripe"):
        return json.dumps(checkout_session(price="price_small", account="nobody")).encode()
    event = {"id": "probe-1", "type": "grant", "account": "nobody", "amount": 1}
    return json.dumps(event).encode()


def probe(api: Running, operation: Operation, *, outage: bool = False) -> None:
    """Send the operation what any client may send; keep each status it answers."""
    webhook = operation.path.startswith("/v1/webhooks/")
    body = webhook_event(operation) if webhook else b"{}"
    sent = body if operation.has_body or webhook else None

    def send(
        token: str | None = ADMIN_TOKEN,
        payload: bytes | None = sent,
        media: str = "application/json",
        key: str | None = "probe",
        bad_path: bool = False,
        **extra: Any,
    ) -> None:
        headers = {} if key is None else {"Idempotency-Key": key}
        if payload is not None:
            headers["Content-Type"] = media
            if webhook:
                headers.update(signed(operation, payload))
        method, url = operation.method.upper(), operation.url(bad=bad_path)
        try:
            answer = api.call(method, url, token=token, data=payload, headers=headers, **extra)
        except requests.exceptions.ChunkedEncodingError:
            operation.seen.add(CUT)  # the answer started, then stopped: no status says so
            return
        operation.seen.add(answer.status_code)

    if outage:  # a request that would pass every check: it reaches Redis
        send(payload=operation.valid_body() if operation.has_body else sent)
        return
    send()
    if operation.patterned:
        send(bad_path=True)
    send(token=None)
    send(token=READ_TOKEN)
    send(key=None)
    send(key="not visible ascii")
    for parameter in operation.spec.get("parameters", []):
        if parameter["in"] == "query":
            send(params={parameter["name"]: bad_value(parameter["schema"])})
    if sent is not None:
        send(media="text/plain")
        send(payload=b"{" * (BODY_LIMIT + 1))
        send(payload=b"{")
        send(payload=b"[]")


@pytest.fixture(scope="module")
def stoppable_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("openapi-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def probed(stoppable_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The document the service serves, and every operation probed on a bare service (no webhook or
    event secrets), on a configured one, then on the configured one with Redis stopped."""
    port = stoppable_redis.port
    settings = RedisSettings(host="127.0.0.1", port=port, connect_timeout=200, read_timeout=200)
    billing = tmp_path_factory.mktemp("openapi") / "billing.yaml"
    billing.write_text(BILLING_MAP)
    with running_service(settings, environ=TOKENS, body_limit=BODY_LIMIT) as bare:
        document: dict[str, Any] = bare.call("GET", "/openapi.json", token=None).json()
        found = operations(document)
        for operation in found:
            probe(bare, operation)
    with running_service(settings, environ=CONFIGURED, body_limit=BODY_LIMIT, billing_map=billing) as api:
        assert api.call("GET", "/openapi.json", token=None).json() == document
        for operation in found:
            probe(api, operation)
        stoppable_redis.stop()
        for operation in found:
            probe(api, operation, outage=True)
    return {"document": document, "operations": found}


def test_the_document_declares_the_bearer_scheme_on_every_operation_that_takes_a_token(
    probed: dict[str, Any],
) -> None:
    schemes = probed["document"]["components"]["securitySchemes"]
    assert schemes["bearer"]["type"] == "http" and schemes["bearer"]["scheme"] == "bearer"
    for operation in probed["operations"]:
        takes_token = operation.path.startswith("/v1/") and not operation.path.startswith("/v1/webhooks/")
        takes_token |= operation.path == "/metrics"
        security = operation.spec.get("security", [])
        assert (security == [{"bearer": []}]) == takes_token, (operation.method, operation.path, security)
        assert (401 in operation.seen) == takes_token, (operation.method, operation.path, operation.seen)


def test_every_status_an_operation_answers_is_listed(probed: dict[str, Any]) -> None:
    undeclared = {
        f"{o.method.upper()} {o.path}": sorted(o.seen - o.declared)
        for o in probed["operations"]
        if o.seen - o.declared
    }
    assert not undeclared, json.dumps(undeclared, indent=1)


def test_every_status_listed_is_one_the_operation_answers(probed: dict[str, Any]) -> None:
    never = {
        f"{o.method.upper()} {o.path}": sorted(errors)
        for o in probed["operations"]
        if (errors := {s for s in o.declared - o.seen - STATEFUL if s >= 400})
    }
    assert not never, json.dumps(never, indent=1)


def test_bodies_size_and_type_are_listed_exactly_where_a_body_is_read(probed: dict[str, Any]) -> None:
    for operation in probed["operations"]:
        reads_json = operation.has_body
        assert (415 in operation.declared) == reads_json, (operation.method, operation.path)
        reads_body = reads_json or operation.path.startswith("/v1/webhooks/")
        assert (413 in operation.declared) == reads_body, (operation.method, operation.path)


def test_the_documents_error_bodies_name_every_code(probed: dict[str, Any]) -> None:
    from creditgate.service.problems import CODES

    text = json.dumps(probed["document"])
    for code in CODES:
        assert code in text, code
