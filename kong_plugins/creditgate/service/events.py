"""Events out: the threshold events the charge script raised, delivered to the operator's URLs.

The charge script writes each event to its account's stream (``<prefix>:{<account>}:events``) in the
same atomic step as the charge that crossed the threshold (store/lua/_lib.lua), so the hot path pays no
round trip for it. This module reads those streams and POSTs each event to every configured URL, signed
like the generic inbound webhook: ``Webhook-Timestamp: <unix seconds>`` and ``Webhook-Signature:
v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``, plus ``Webhook-Id: <event id>``.

At least once, in order per account. An account's next event is sent once its current one is settled at
every URL: delivered (a 2xx), or given up after the last attempt and kept as a dead letter
(``<prefix>:events:dead``, read and replayed through the API). Only then does the account's cursor
(``<prefix>:events:cursors``) move past it, so a service that stops mid-way sends the event again after
its restart, with the same id (derived from the account and the stream entry, stable across restarts):
receivers drop the repeats by ``Webhook-Id``. Attempts back off exponentially (base, doubled, capped).
Run one delivering service per Redis: two would each deliver every event (still at least once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import requests
from fastapi import APIRouter, Path, Query

from creditgate.core.alerts import FIELDS, Alerts
from creditgate.core.inputs import format_instant
from creditgate.errors import ConfigError, CreditGateError, NotFound
from creditgate.service.problems import ApiProblem
from creditgate.service.routes import (
    READ,
    WRITE,
    AccountName,
    Reader,
    Writer,
    _problems,
    _request_body,
    body_dependency,
)
from creditgate.service.webhooks import generic_signature
from creditgate.store import events as stored
from creditgate.store.store import RedisStore

log = logging.getLogger("creditgate.service")

URLS_ENV = "CREDIT_GATE_EVENT_URLS"
SECRET_ENV = "CREDIT_GATE_EVENT_SECRET"
ATTEMPTS_ENV = "CREDIT_GATE_EVENT_ATTEMPTS"
BACKOFF_ENV = "CREDIT_GATE_EVENT_BACKOFF"
BACKOFF_MAX_ENV = "CREDIT_GATE_EVENT_BACKOFF_MAX"
TIMEOUT_ENV = "CREDIT_GATE_EVENT_TIMEOUT"
POLL_ENV = "CREDIT_GATE_EVENT_POLL"
BATCH = 50  # events read per account and pass
ACCOUNTS_PER_READ = 500  # accounts' streams read per pipelined round trip


def _number(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    text = env.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo:g} and {hi:g}, got {text}")
    return value


@dataclass(frozen=True)
class EventSettings:
    """From the environment: where to deliver, the signing secret, and how hard to try."""

    urls: tuple[str, ...] = ()
    secret: str = ""
    attempts: int = 10  # per URL, before the event becomes a dead letter
    backoff: float = 1.0  # seconds before the 2nd attempt; doubled each time
    backoff_max: float = 600.0
    timeout: float = 5.0  # seconds one POST may take
    poll: float = 1.0  # seconds between reads of the streams when nothing is due

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> EventSettings:
        env = os.environ if environ is None else environ
        urls = tuple(u for u in re.split(r"[\s,]+", env.get(URLS_ENV, "")) if u)
        for url in urls:
            if not re.match(r"^https?://[^\s/]+", url):
                raise ConfigError(f"{URLS_ENV}: {url!r} is not an http(s) URL")
        secret = env.get(SECRET_ENV, "")
        if urls and len(secret) < 16:
            raise ConfigError(
                f"{URLS_ENV} is set: set {SECRET_ENV} (16 characters or more) to sign the events"
            )
        return cls(
            urls=urls,
            secret=secret,
            attempts=int(_number(env, ATTEMPTS_ENV, 10, 1, 1000)),
            backoff=_number(env, BACKOFF_ENV, 1.0, 0.001, 3600),
            backoff_max=_number(env, BACKOFF_MAX_ENV, 600.0, 0.001, 86_400),
            timeout=_number(env, TIMEOUT_ENV, 5.0, 0.1, 120),
            poll=_number(env, POLL_ENV, 1.0, 0.01, 3600),
        )


def event_id(account: str, stream_id: str) -> str:
    """Stable: the same account and stream entry give the same id, whoever delivers it and how often."""
    return (
        "evt_" + hashlib.sha256(f"{account}\n{stream_id}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
    )


NUMBERS = {"balance", "level", "allowance", "remaining", "percent", "expires_at", "period_start"}


def event_document(account: str, stream_id: str, fields: Mapping[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, value in fields.items():
        if name in ("type", "at"):
            continue
        data[name] = int(value) if name in NUMBERS and re.fullmatch(r"-?[0-9]{1,17}", value) else value
    for name in ("expires_at", "period_start"):
        if isinstance(data.get(name), int):
            data[name] = format_instant(data[name])
    at = fields.get("at", "0")
    return {
        "id": event_id(account, stream_id),
        "type": fields.get("type", ""),
        "account": account,
        "at": format_instant(int(at)) if at.isdigit() else at,
        "data": data,
    }


def sign(secret: str, body: bytes, now: float) -> dict[str, str]:
    timestamp = str(int(now))
    return {"Webhook-Timestamp": timestamp, "Webhook-Signature": generic_signature(secret, timestamp, body)}


def post(session: requests.Session, settings: EventSettings, url: str, event: dict[str, Any]) -> str:
    """One attempt: "" when the receiver took it (a 2xx), else why not."""
    body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "Webhook-Id": event["id"],
        **sign(settings.secret, body, time.time()),
    }
    try:
        response = session.post(
            url, data=body, headers=headers, timeout=settings.timeout, allow_redirects=False
        )
    except requests.RequestException as error:
        return f"{type(error).__name__}: {error}"[:500]
    if 200 <= response.status_code < 300:
        return ""
    return f"HTTP {response.status_code}"


def dead_letter_id(event_id_: str, url: str) -> str:
    return hashlib.sha256(f"{event_id_}\n{url}".encode()).hexdigest()[:24]


@dataclass
class _Target:
    attempts: int = 0
    due: float = 0.0


@dataclass
class _Pending:
    stream_id: str
    event: dict[str, Any]
    targets: dict[str, _Target] = field(default_factory=dict)


class Dispatcher:
    """Reads the alerting accounts' streams and delivers their events; ``step`` is one pass (the thread
    calls it in a loop; tests call it with their own clock). The streams, cursors and dead letters are
    the store's own (``store/events.py``)."""

    def __init__(
        self,
        store: RedisStore,
        settings: EventSettings,
        *,
        count: Callable[[str], None] = lambda outcome: None,
        session: requests.Session | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.count = count
        self.session = session or requests.Session()
        self.session.trust_env = False  # the operator's URLs, not a proxy the environment names
        self._queues: dict[str, deque[_Pending]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # One pass

    def _fill(self) -> None:
        """Read new events of every account whose queue is empty, past its cursor."""
        idle = [a for a in stored.alerting_accounts(self.store) if not self._queues.get(a)]
        for i in range(0, len(idle), ACCOUNTS_PER_READ):
            batch = idle[i : i + ACCOUNTS_PER_READ]
            for account, entries in zip(batch, stored.read_events(self.store, batch, BATCH), strict=True):
                queue = self._queues.setdefault(account, deque())
                for sid, fields in entries:
                    event = event_document(account, sid, fields)
                    queue.append(_Pending(sid, event, {url: _Target() for url in self.settings.urls}))

    def _attempt(self, account: str, pending: _Pending, now: float) -> None:
        for url, target in list(pending.targets.items()):
            if target.due > now:
                continue
            error = post(self.session, self.settings, url, pending.event)
            target.attempts += 1
            if not error:
                self.count("delivered")
                del pending.targets[url]
                continue
            self.count("failed")
            if target.attempts >= self.settings.attempts:
                self._bury(pending.event, url, target.attempts, error, now)
                del pending.targets[url]
                continue
            delay = min(self.settings.backoff * 2 ** (target.attempts - 1), self.settings.backoff_max)
            target.due = now + delay
            log.info(
                "credit-gate: event %s to %s failed (%s); attempt %d in %.3g s",
                pending.event["id"], url, error, target.attempts + 1, delay,
            )  # fmt: skip

    def _bury(self, event: dict[str, Any], url: str, attempts: int, error: str, now: float) -> None:
        letter = {
            "id": dead_letter_id(event["id"], url),
            "event": event,
            "url": url,
            "attempts": attempts,
            "error": error,
            "dead_at": format_instant(int(time.time())),
        }
        stored.put_dead_letter(self.store, letter)
        self.count("dead_lettered")
        log.warning("credit-gate: event %s to %s given up after %d attempts (%s): a dead letter now",
                    event["id"], url, attempts, error)  # fmt: skip

    def step(self, now: float | None = None) -> float:
        """Read, then send what is due; returns the seconds until something is due (at most ``poll``)."""
        moment = time.monotonic() if now is None else now
        self._fill()
        next_due = moment + self.settings.poll
        for account, queue in self._queues.items():
            while queue:
                head = queue[0]
                self._attempt(account, head, moment)
                if head.targets:
                    next_due = min(next_due, *(t.due for t in head.targets.values()))
                    break
                # Settled at every URL: the cursor moves past it (a restart before this line sends it again).
                stored.move_cursor(self.store, account, head.stream_id)
                queue.popleft()
        return max(0.0, next_due - moment)

    # The thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.step()
            except CreditGateError as error:  # Redis down or answering errors: try again after a poll
                log.warning("credit-gate: events not read: %s", error)
                wait = self.settings.poll
            except Exception as error:
                log.error("credit-gate: event delivery failed: %r", error, exc_info=error)
                wait = self.settings.poll
            self._stop.wait(wait)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="credit-gate-events", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.settings.timeout + 5)
            self._thread = None


# The API: alerts per account, the events raised, the dead letters

router = APIRouter(prefix="/v1", tags=["events"])

ALERTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "balance_below": {
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "balance.low when a charge takes the balance below this many credits",
        },
        "depleted": {
            "type": "boolean",
            "description": "balance.depleted when a charge takes the balance to 0",
        },
        "allowance_below_percent": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": 100,
            "description": "allowance.low when the period's allowance left drops below this share",
        },
        "expiring_within": {
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "subscription.expiring on the first request this many seconds before it expires",
        },
        "first_refusal": {
            "type": "boolean",
            "description": "account.refused on the first refusal in a period (a UTC day without one)",
        },
    },
}
assert set(ALERTS_SCHEMA["properties"]) == set(FIELDS)
DEAD_LETTER_ID = Annotated[str, Path(pattern="^[0-9a-f]{24}$")]


@router.get("/accounts/{account:name}/alerts", responses={**READ, **_problems(404)})
def get_alerts(service: Reader, account: AccountName) -> dict[str, Any]:
    """What the account's threshold events watch (null or false: not watched)."""
    alerts: Alerts = service.admin.alerts(account)
    return {"account": account, **alerts.to_json()}


@router.put(
    "/accounts/{account:name}/alerts",
    responses={**WRITE, **_problems(404)},
    openapi_extra=_request_body(ALERTS_SCHEMA),
)
def put_alerts(
    service: Writer,
    account: AccountName,
    content: Annotated[dict[str, Any], body_dependency(ALERTS_SCHEMA)],
) -> dict[str, Any]:
    """Replace what the account's threshold events watch; in force from its next charge."""
    alerts = service.admin.set_alerts(account, Alerts.from_json(content))
    return {"account": account, **alerts.to_json()}


@router.delete("/accounts/{account:name}/alerts", responses={**WRITE, **_problems(404)})
def delete_alerts(service: Writer, account: AccountName) -> dict[str, Any]:
    alerts = service.admin.set_alerts(account, Alerts())
    return {"account": account, **alerts.to_json()}


@router.get("/accounts/{account:name}/events", responses={**READ, **_problems(404)})
def account_events(
    service: Reader, account: AccountName, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """The newest events raised for the account (its stream keeps about 1000), oldest first."""
    entries = service.admin.recent_events(account, limit)
    events = [event_document(account, e.pop("stream_id"), e) for e in entries]
    return {"account": account, "events": events}


@router.get("/events/dead-letters", responses=READ)
def dead_letters(service: Reader) -> dict[str, Any]:
    """Events a receiver did not take after the last attempt, oldest first."""
    letters = sorted(stored.dead_letters(service.admin.store).values(), key=lambda d: (d["dead_at"], d["id"]))
    return {"dead_letters": letters}


def settings_of(service: Any) -> EventSettings:
    settings = service.extra.get("events")
    return settings if isinstance(settings, EventSettings) else EventSettings()


@router.post("/events/dead-letters/{letter}/replay", responses={**WRITE, **_problems(404, 502)})
def replay_dead_letter(service: Writer, letter: DEAD_LETTER_ID) -> dict[str, Any]:
    """Send the event to its URL again, now, once: delivered, it leaves the list; failed, it stays (502)."""
    settings = settings_of(service)
    if not settings.secret:
        raise ApiProblem(404, "events_not_configured", f"set {SECRET_ENV} to sign the events it sends")
    found = stored.dead_letters(service.admin.store).get(letter)
    if found is None:
        raise NotFound(f"no dead letter '{letter}'")
    session = requests.Session()
    session.trust_env = False
    with session:
        error = post(session, settings, found["url"], found["event"])
    if error:
        raise ApiProblem(502, "delivery_failed", f"{found['url']} did not take the event: {error}")
    stored.drop_dead_letter(service.admin.store, letter)
    return {"id": letter, "delivered": True, "event": found["event"]["id"], "url": found["url"]}


@router.delete("/events/dead-letters/{letter}", responses={**WRITE, **_problems(404)})
def drop_dead_letter(service: Writer, letter: DEAD_LETTER_ID) -> dict[str, Any]:
    if not stored.drop_dead_letter(service.admin.store, letter):
        raise NotFound(f"no dead letter '{letter}'")
    return {"id": letter, "dropped": True}


__all__ = ["Dispatcher", "EventSettings", "event_id", "router"]
