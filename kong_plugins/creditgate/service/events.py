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

A receiver's URL may hold its secret (a password, a token in the path or the query): wherever it is
shown, to a read-only token, in an error or a log line, it is ``redacted_url``'s form, and an error's
text goes through ``redacted_text`` first (see docs/service.md, "Receivers' secrets").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit

import requests
from fastapi import APIRouter, Path, Query

from creditgate.core.alerts import FIELDS, Alerts
from creditgate.core.inputs import format_instant
from creditgate.errors import ConfigError, CreditGateError, NotFound
from creditgate.ops.dead_letters import find_letters, letter_page, replay_letters
from creditgate.service.problems import ApiProblem
from creditgate.service.routes import (
    BODY,
    PARAMS,
    READ,
    WRITE,
    AccountName,
    Reader,
    Writer,
    _body_schema,
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


# A path segment shown as it is: a lowercase word (letters, '.', '_', '-') or a version (v1). Anything
# else may be a token (Slack's /services/T0/B0/<secret>, Discord's /webhooks/<id>/<token>) and is hidden.
_PLAIN_SEGMENT = re.compile(r"[a-z][a-z._-]{0,31}|v[0-9]{1,3}")
_QUERY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
HIDDEN = "***"


def redacted_url(url: str) -> str:
    """The receiver as it may be shown: ``scheme://host[:port]``, the path's plain words and the query's
    names; the userinfo, every other path segment, every query value and the fragment become ``***``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that does not parse
    except ValueError:
        return HIDDEN
    shown = f"{parts.scheme}:" if parts.scheme else ""
    if parts.netloc:
        _, at, host = parts.netloc.rpartition("@")
        shown += f"//{HIDDEN + '@' if at else ''}{host}"
    shown += "/".join(s if not s or _PLAIN_SEGMENT.fullmatch(s) else HIDDEN for s in parts.path.split("/"))
    if parts.query:
        pairs = (p.partition("=") for p in parts.query.split("&"))
        shown += "?" + "&".join(
            f"{name}={HIDDEN}" if eq and _QUERY_NAME.fullmatch(name) else HIDDEN for name, eq, _ in pairs
        )
    return shown + (f"#{HIDDEN}" if parts.fragment else "")


def _secrets(url: str) -> set[str]:
    """What ``redacted_url`` hides, as written and as an HTTP client may quote it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return {url}
    userinfo = parts.netloc.rpartition("@")[0]
    found = {userinfo, *userinfo.split(":"), parts.fragment}
    found.update(s for s in parts.path.split("/") if not _PLAIN_SEGMENT.fullmatch(s))
    for name, eq, value in (p.partition("=") for p in parts.query.split("&")):
        found.add(value if eq and _QUERY_NAME.fullmatch(name) else name + eq + value)
    forms = set()
    for secret in found - {""}:
        forms |= {secret, unquote(secret), unquote_plus(secret), quote(unquote(secret), safe="")}
    return forms - {""}


def redacted_text(text: str, url: str) -> str:
    """``text`` (an error, a log line) with ``url`` and each of its secrets replaced, however quoted."""
    # Each secret where it stands whole (not inside a longer word: a user "u" leaves "url" alone).
    secrets = sorted(_secrets(url), key=len, reverse=True)
    pieces = text.split(url) if url else [text]
    if secrets:
        pattern = re.compile("(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, secrets)) + ")(?![A-Za-z0-9])")
        pieces = [pattern.sub(HIDDEN, piece) for piece in pieces]
    return redacted_url(url).join(pieces)


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
            if not _is_http_url(url):
                raise ConfigError(f"{URLS_ENV}: {redacted_url(url)!r} is not an http(s) URL")
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


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that does not parse, a bracketed host that is not an address
        return False


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
    except (requests.RequestException, ValueError) as error:
        # The client's words quote the URL (requests' "Max retries exceeded with url: /path?token=..."):
        # redacted before anything keeps or shows them, then cut (a cut first could leave half a secret).
        return redacted_text(f"{type(error).__name__}: {error}", url)[:500]
    if 200 <= response.status_code < 300:
        return ""
    return f"HTTP {response.status_code}"


def dead_letter_id(event_id_: str, url: str, secret: str = "") -> str:
    """Stable per event and URL. Keyed with the signing secret: an id shown to a read-only token is no
    unsalted hash of the URL, against which its secret could be guessed offline."""
    message = f"{event_id_}\n{url}".encode()
    if secret:
        return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:24]
    return hashlib.sha256(message).hexdigest()[:24]


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
        count: Callable[[str], None] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        # Every attempt, by outcome; by default into the store's counters (Redis: they outlive a restart).
        self.count = count or (lambda outcome: stored.count_delivery(store, outcome))
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
                del pending.targets[url]
                self._count("delivered")
                continue
            self._count("failed")
            if target.attempts >= self.settings.attempts:
                self._bury(pending.event, url, target.attempts, error, now)  # kept before it is let go
                del pending.targets[url]
                continue
            delay = min(self.settings.backoff * 2 ** (target.attempts - 1), self.settings.backoff_max)
            target.due = now + delay
            log.warning(
                "credit-gate: event %s to %s failed (%s); attempt %d in %.3g s",
                pending.event["id"], redacted_url(url), error, target.attempts + 1, delay,
            )  # fmt: skip

    def _bury(self, event: dict[str, Any], url: str, attempts: int, error: str, now: float) -> None:
        letter = {
            "id": dead_letter_id(event["id"], url, self.settings.secret),
            "event": event,
            "url": url,
            "attempts": attempts,
            "error": error,
            "dead_at": format_instant(int(time.time())),
        }
        stored.put_dead_letter(self.store, letter)
        self._count("dead_lettered")
        log.error("credit-gate: event %s to %s given up after %d attempts (%s): a dead letter now",
                  event["id"], redacted_url(url), attempts, error)  # fmt: skip

    def _count(self, outcome: str) -> None:
        """A count lost to a Redis outage must not stop delivery (nor have an event sent twice)."""
        try:
            self.count(outcome)
        except CreditGateError as error:
            log.debug("credit-gate: event delivery not counted: %s", error)

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
            except Exception as error:  # the traceback, its URLs redacted (the message may quote one)
                trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                log.error("credit-gate: event delivery failed: %s", self._redacted(trace))
                wait = self.settings.poll
            self._stop.wait(wait)

    def _redacted(self, text: str) -> str:
        for url in self.settings.urls:
            text = redacted_text(text, url)
        return text

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
ONLY_ACCOUNT = "Only this account's events"
ONLY_RECEIVER = "Only to this receiver: its URL as configured or as shown"
OfAccount = Annotated[str | None, Query(description=ONLY_ACCOUNT)]
ToReceiver = Annotated[str | None, Query(description="Only to this receiver: its URL as shown (redacted)")]


@router.get("/accounts/{account:name}/alerts", responses={**READ, **_problems(404)})
def get_alerts(service: Reader, account: AccountName) -> dict[str, Any]:
    """What the account's threshold events watch (null or false: not watched)."""
    alerts: Alerts = service.admin.alerts(account)
    return {"account": account, **alerts.to_json()}


@router.put(
    "/accounts/{account:name}/alerts",
    responses={**WRITE, **BODY, **_problems(404)},
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


@router.get("/accounts/{account:name}/events", responses={**READ, **PARAMS, **_problems(404)})
def account_events(
    service: Reader, account: AccountName, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """The newest events raised for the account (its stream keeps about 1000), oldest first."""
    entries = service.admin.recent_events(account, limit)
    events = [event_document(account, e.pop("stream_id"), e) for e in entries]
    return {"account": account, "events": events}


@router.get("/events/dead-letters", responses={**READ, **PARAMS})
def dead_letters(
    service: Reader,
    account: OfAccount = None,
    receiver: ToReceiver = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[str | None, Query(max_length=256, description="The `next` of the previous page")] = None,
) -> dict[str, Any]:
    """Events a receiver did not take after the last attempt, oldest first, a page at a time: `next` is
    the `after` of the following page (null on the last). A page reads at most 1001 letters: with
    `account` or `receiver` it may hold fewer than `limit`, even none, and have a `next`. `waiting`:
    every letter kept, matched or not."""
    # A read-only token names a receiver as shown: matching the URL as configured would let it test
    # guesses of a receiver's secret, one request each.
    shown = receiver_filter(receiver or None, as_configured=False)
    page = letter_page(service.admin, after=after, limit=limit, account=account or None, receiver=shown)
    letters = [shown_letter(d) for d in page.letters]
    return {"dead_letters": letters, "next": page.next, "waiting": page.waiting}


def shown_letter(letter: dict[str, Any]) -> dict[str, Any]:
    """A dead letter as the API shows it: its URL redacted, in its error too (letters kept by a version
    before this one hold the error as the client wrote it)."""
    url = str(letter.get("url", ""))
    error = str(letter.get("error", ""))
    if not re.fullmatch(r"HTTP [0-9]{3}", error):
        error = redacted_text(error, url)
    return {**letter, "url": redacted_url(url), "error": error}


def settings_of(service: Any) -> EventSettings:
    settings = service.extra.get("events")
    return settings if isinstance(settings, EventSettings) else EventSettings()


@router.post("/events/dead-letters/{letter}/replay", responses={**WRITE, **PARAMS, **_problems(404, 502)})
def replay_dead_letter(service: Writer, letter: DEAD_LETTER_ID) -> dict[str, Any]:
    """Send the event to its URL again, now, once: delivered, it leaves the list; failed, it stays (502)."""
    settings = settings_of(service)
    if not settings.secret:
        raise ApiProblem(404, "events_not_configured", f"set {SECRET_ENV} to sign the events it sends")
    found = stored.dead_letter(service.admin.store, letter)
    if found is None:
        raise NotFound(f"no dead letter '{letter}'")
    with replay_session() as session:
        done = replay_letters(service.admin, [found], sender(settings, session))
    if done.failed:
        (_, error), shown = done.failed[0], redacted_url(found["url"])
        raise ApiProblem(502, "delivery_failed", f"{shown} did not take the event: {error}")
    return {"id": letter, "delivered": True, "event": found["event"]["id"], "url": redacted_url(found["url"])}


REPLAY_SCHEMA = _body_schema(
    {
        "account": {"type": "string", "minLength": 1, "description": ONLY_ACCOUNT},
        "receiver": {"type": "string", "minLength": 1, "description": ONLY_RECEIVER},
        "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
    [],
)


@router.post(
    "/events/dead-letters/replay",
    responses={**WRITE, **BODY, **_problems(404)},
    openapi_extra=_request_body(REPLAY_SCHEMA),
)
def replay_dead_letters(
    service: Writer, content: Annotated[dict[str, Any], body_dependency(REPLAY_SCHEMA)]
) -> dict[str, Any]:
    """Send the matching letters (`{}`: every one) again, oldest first, at most `limit`: each delivered
    leaves the list; a receiver that fails is not tried again in this call (its letters stay); `left` is
    how many match still (call again while it is not 0 and nothing failed)."""
    settings = settings_of(service)
    if not settings.secret:
        raise ApiProblem(404, "events_not_configured", f"set {SECRET_ENV} to sign the events it sends")
    receiver = receiver_filter(content.get("receiver"))
    letters = find_letters(service.admin, account=content.get("account"), receiver=receiver)
    with replay_session() as session:
        done = replay_letters(service.admin, letters[: content.get("limit", 100)], sender(settings, session))
    return {
        "delivered": [d["id"] for d in done.delivered],
        "failed": [{"id": d["id"], "url": redacted_url(d["url"]), "error": e} for d, e in done.failed],
        "skipped": len(done.skipped),
        "left": len(letters) - len(done.delivered),
    }


def receiver_filter(receiver: str | None, *, as_configured: bool = True) -> Callable[[str], bool] | None:
    """Letters to one receiver, named by its URL as configured (``as_configured``: a read-write token's
    routes) or as the API shows it (redacted)."""
    if receiver is None:
        return None
    if not as_configured:
        return lambda url: redacted_url(url) == receiver
    return lambda url: url == receiver or redacted_url(url) == receiver


def sender(settings: EventSettings, session: requests.Session) -> Callable[[str, dict[str, Any]], str]:
    """``post`` for an operator's replay, a failure logged at warning with the receiver redacted."""

    def send(url: str, event: dict[str, Any]) -> str:
        error = post(session, settings, url, event)
        if error:
            log.warning("credit-gate: event %s replayed to %s failed (%s): still a dead letter",
                        event.get("id"), redacted_url(url), error)  # fmt: skip
        return error

    return send


def replay_session() -> requests.Session:
    """The HTTP session an operator's replay posts through."""
    session = requests.Session()
    session.trust_env = False  # the operator's URLs, not a proxy the environment names
    return session


@router.delete("/events/dead-letters/{letter}", responses={**WRITE, **PARAMS, **_problems(404)})
def drop_dead_letter(service: Writer, letter: DEAD_LETTER_ID) -> dict[str, Any]:
    if not stored.drop_dead_letter(service.admin.store, letter):
        raise NotFound(f"no dead letter '{letter}'")
    return {"id": letter, "dropped": True}


__all__ = ["Dispatcher", "EventSettings", "event_id", "redacted_text", "redacted_url", "router"]
