"""Threshold events: raised by the charge script once per crossing, delivered once each to a receiver over
real HTTP (signed, retried with backoff), dead letters read and replayed through the API, one by one or in
bulk per receiver and per account; every attempt counted in Redis (so the counts outlive the service), the
dead letters waiting a gauge, and every failed attempt logged with the receiver's secrets hidden."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from creditgate.core.alerts import Alerts
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.ops.dead_letters import find_letters
from creditgate.service.events import Dispatcher, EventSettings
from creditgate.store import events as stored
from creditgate.store.store import RedisStore
from tests.redis_servers import RedisClusterServers, RedisServer, wait_until
from tests.service_support import ADMIN_TOKEN, READ_TOKEN, running_service

SECRET = "event-secret-0123456789"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z


def events_of(store: RedisStore, account: str) -> list[dict[str, str]]:
    raw = store._run("XRANGE", store.keys.account(account).events, "-", "+")
    return [{_t(k): _t(v) for k, v in fields.items()} for _, fields in raw]


def _t(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def types(store: RedisStore, account: str) -> list[str]:
    return [e["type"] for e in events_of(store, account)]


def subscribe(admin: Admin, account: str, allowance: int = 0, prepaid: bool = True, **options: Any) -> None:
    admin.apply_plan(Plan(name="pro", period=Period.MONTH, allowance=allowance, prepaid=prepaid))
    admin.subscribe(account, "pro", starts_at=NOW - 86_400, **options)


def test_a_balance_crossing_its_level_under_concurrent_charges_raises_each_event_once(
    admin: Admin, store: RedisStore
) -> None:
    subscribe(admin, "acme")
    admin.grant("acme", 100)
    admin.set_alerts("acme", Alerts(balance_below=50, depleted=True, first_refusal=True))
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: store.charge(ChargeRequest("acme", 5, now=NOW + 10)), range(40)))
    assert sum(r.allowed for r in results) == 20  # 100 credits, 5 each; the rest refused
    assert types(store, "acme") == ["balance.low", "balance.depleted", "account.refused"]
    low, depleted, refused = events_of(store, "acme")
    assert int(low["balance"]) < 50 <= int(low["balance"]) + 5 and low["level"] == "50"
    assert depleted["balance"] == "0" and refused["reason"] == "insufficient_credit"


def test_a_new_crossing_after_a_top_up_raises_again_and_a_new_period_refuses_anew(
    admin: Admin, store: RedisStore
) -> None:
    subscribe(admin, "acme")
    admin.grant("acme", 60)
    admin.set_alerts("acme", Alerts(balance_below=50, first_refusal=True))
    assert store.charge(ChargeRequest("acme", 20, now=NOW)).allowed  # 40: crossed
    assert store.charge(ChargeRequest("acme", 20, now=NOW)).allowed  # 20: still below, nothing new
    admin.grant("acme", 60)  # 80: above again
    assert store.charge(ChargeRequest("acme", 40, now=NOW)).allowed  # 40: crossed again
    assert not store.charge(ChargeRequest("acme", 100, now=NOW)).allowed
    assert not store.charge(ChargeRequest("acme", 100, now=NOW + 60)).allowed  # same period: told once
    assert not store.charge(
        ChargeRequest("acme", 100, now=NOW + 40 * 86_400)
    ).allowed  # next month: told again
    assert types(store, "acme") == ["balance.low", "balance.low", "account.refused", "account.refused"]


def test_the_allowance_share_and_the_expiry_are_each_told_once_per_period_and_expiry(
    admin: Admin, store: RedisStore
) -> None:
    subscribe(admin, "acme", allowance=100, prepaid=False, expires_at=NOW + 3 * 86_400)
    admin.set_alerts("acme", Alerts(allowance_below_percent=25, expiring_within=7 * 86_400))
    for _ in range(10):
        assert store.charge(ChargeRequest("acme", 10, now=NOW)).allowed
    kinds = types(store, "acme")
    assert kinds == ["subscription.expiring", "allowance.low"]
    assert events_of(store, "acme")[1]["remaining"] == "20"  # 30 left was not below 25%
    admin.set_alerts("acme", Alerts(allowance_below_percent=25, expiring_within=7 * 86_400))
    assert store.charge(ChargeRequest("acme", 0, now=NOW + 1)).allowed
    assert types(store, "acme") == kinds  # setting the same alerts again tells nothing twice


def test_shadow_mode_and_accounts_without_alerts_raise_nothing(admin: Admin, store: RedisStore) -> None:
    subscribe(admin, "acme")
    admin.grant("acme", 10)
    admin.set_alerts("acme", Alerts(depleted=True, first_refusal=True))
    assert store.charge(ChargeRequest("acme", 10, now=NOW, shadow=True)).allowed
    assert not store.charge(ChargeRequest("acme", 11, now=NOW, shadow=True)).allowed
    subscribe(admin, "plain")
    admin.grant("plain", 10)
    assert store.charge(ChargeRequest("plain", 10, now=NOW)).allowed
    assert types(store, "acme") == [] and types(store, "plain") == []


def test_a_corrupted_events_key_or_alert_field_never_costs_a_charge(
    admin: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    subscribe(admin, "acme")
    admin.grant("acme", 10)
    admin.set_alerts("acme", Alerts(depleted=True))
    redis_client.set(store.keys.account("acme").events, "not a stream")
    redis_client.hset(store.keys.account("acme").state, "alert_balance_below", "1e3")
    assert store.charge(ChargeRequest("acme", 10, now=NOW)).allowed
    assert admin.account("acme").balance == 0
    assert admin.alerts("acme") == Alerts(depleted=True)  # the bad field reads as unset, as in the script


# Delivery


@dataclass
class Receiver:
    """A real HTTP server: answers 503 to its first ``fail`` requests, then 204; keeps what it got."""

    fail: int = 0
    got: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, headers: Any, body: bytes) -> int:
        timestamp, signature = headers["Webhook-Timestamp"], headers["Webhook-Signature"]
        expected = (
            "v1=" + hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        )
        assert hmac.compare_digest(signature, expected)
        event = json.loads(body)
        assert headers["Webhook-Id"] == event["id"]
        with self.lock:
            if self.fail > 0:
                self.fail -= 1
                self.refused += 1
                return 503
            self.got.append(event)
            return 204


@contextmanager
def receiver(fail: int = 0) -> Iterator[Receiver]:
    state = Receiver(fail=fail)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(state.handle(self.headers, body))
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def event_env(url: str, **extra: str) -> dict[str, str]:
    from tests.service_support import ADMIN_TOKEN, READ_TOKEN

    return {
        "CREDIT_GATE_ADMIN_TOKENS": ADMIN_TOKEN,
        "CREDIT_GATE_READ_TOKENS": READ_TOKEN,
        "CREDIT_GATE_EVENT_URLS": url,
        "CREDIT_GATE_EVENT_SECRET": SECRET,
        "CREDIT_GATE_EVENT_BACKOFF": "0.02",
        "CREDIT_GATE_EVENT_POLL": "0.05",
        **extra,
    }


def setup_accounts(api: Any, names: list[str]) -> None:
    assert api.call("POST", "/v1/plans", json={"name": "pro", "prepaid": True}).ok
    for name in names:
        assert api.call("PUT", f"/v1/accounts/{name}/subscription", json={"plan": "pro", "starts_at": 0}).ok
        grant = api.call(
            "POST", f"/v1/accounts/{name}/grants", json={"amount": 100}, headers={"Idempotency-Key": name}
        )
        assert grant.status_code == 201
        alerts = {"balance_below": 50, "depleted": True, "first_refusal": True}
        answer = api.call("PUT", f"/v1/accounts/{name}/alerts", json=alerts)
        assert answer.status_code == 200, answer.text
        assert answer.json()["balance_below"] == 50


def test_events_raised_by_concurrent_charges_are_delivered_once_each_through_a_failing_receiver(
    settings: RedisSettings, store: RedisStore
) -> None:
    with receiver(fail=4) as hook, running_service(settings, event_env(hook.url)) as api:
        accounts = ["acme", "globex", "initech"]
        setup_accounts(api, accounts)
        with ThreadPoolExecutor(12) as pool:
            list(
                pool.map(
                    lambda i: store.charge(ChargeRequest(accounts[i % 3], 10, route="route:r")), range(60)
                )
            )
        wait_until(lambda: len(hook.got) == 9, 20, "nine events delivered")
        assert hook.refused == 4  # the receiver failed, the service retried, the receiver recovered
        assert len({e["id"] for e in hook.got}) == 9  # each delivered once
        for account in accounts:
            mine = [e["type"] for e in hook.got if e["account"] == account]
            assert mine == ["balance.low", "balance.depleted", "account.refused"]  # in order per account
        listed = api.call("GET", "/v1/accounts/acme/events").json()["events"]
        assert [e["id"] for e in listed] == [e["id"] for e in hook.got if e["account"] == "acme"]
        metrics = api.call("GET", "/metrics").text
        assert 'credit_gate_event_deliveries_total{outcome="delivered",via="dispatcher"} 9.0' in metrics
        assert 'credit_gate_event_deliveries_total{outcome="failed",via="dispatcher"} 4.0' in metrics


def test_an_event_given_up_is_a_dead_letter_that_replays_once_the_receiver_recovers(
    settings: RedisSettings, store: RedisStore
) -> None:
    with (
        receiver(fail=10**6) as hook,
        running_service(settings, event_env(hook.url, CREDIT_GATE_EVENT_ATTEMPTS="3")) as api,
    ):
        setup_accounts(api, ["acme"])
        assert store.charge(ChargeRequest("acme", 100)).allowed  # balance.low and balance.depleted
        wait_until(
            lambda: len(api.call("GET", "/v1/events/dead-letters").json()["dead_letters"]) == 2,
            20,
            "two dead",
        )
        letters = api.call("GET", "/v1/events/dead-letters").json()["dead_letters"]
        assert sorted(d["event"]["type"] for d in letters) == ["balance.depleted", "balance.low"]
        assert {d["attempts"] for d in letters} == {3} and {d["url"] for d in letters} == {hook.url}
        assert hook.refused == 6

        failed = api.call("POST", f"/v1/events/dead-letters/{letters[0]['id']}/replay")
        assert failed.status_code == 502 and failed.json()["code"] == "delivery_failed"
        hook.fail = 0
        for letter in letters:
            replayed = api.call("POST", f"/v1/events/dead-letters/{letter['id']}/replay")
            assert replayed.status_code == 200 and replayed.json()["delivered"] is True
        assert sorted(e["id"] for e in hook.got) == sorted(d["event"]["id"] for d in letters)
        assert api.call("GET", "/v1/events/dead-letters").json()["dead_letters"] == []
        again = api.call("POST", f"/v1/events/dead-letters/{letters[0]['id']}/replay")
        assert again.status_code == 404
        assert api.call("GET", "/v1/events/dead-letters", token=None).status_code == 401


def test_a_restart_before_the_cursor_moved_sends_the_event_again_with_the_same_id(
    admin: Admin, store: RedisStore
) -> None:
    subscribe(admin, "acme")
    admin.grant("acme", 10)
    admin.set_alerts("acme", Alerts(depleted=True))
    assert store.charge(ChargeRequest("acme", 10, now=NOW)).allowed
    with receiver(fail=1) as hook:
        settings = EventSettings(urls=(hook.url,), secret=SECRET, attempts=5, backoff=10)
        first = Dispatcher(store, settings)
        assert first.step(now=0) == pytest.approx(1.0)  # failed; the retry is 10 s away, past a poll
        assert hook.refused == 1 and hook.got == []
        first.step(now=5)  # not due yet: nothing sent
        assert hook.refused == 1
        # The service stops here; a new one starts from the cursor, which has not moved.
        second = Dispatcher(store, settings)
        second.step(now=0)
        second.step(now=1)  # settled: nothing more
        assert [e["type"] for e in hook.got] == ["balance.depleted"]
        first.step(now=11)  # the old one's retry, had it lived, sends the same id: receivers drop it
        assert hook.got[0]["id"] == hook.got[1]["id"]


def test_event_settings_refuse_urls_without_a_secret() -> None:
    from creditgate.errors import ConfigError

    with pytest.raises(ConfigError, match="CREDIT_GATE_EVENT_SECRET"):
        EventSettings.load({"CREDIT_GATE_EVENT_URLS": "http://127.0.0.1:1/x"})
    with pytest.raises(ConfigError, match="not an http"):
        EventSettings.load({"CREDIT_GATE_EVENT_URLS": "ftp://x", "CREDIT_GATE_EVENT_SECRET": SECRET})
    assert EventSettings.load({}).urls == ()


@pytest.mark.server
def test_on_a_cluster_each_accounts_events_stay_in_its_slot_and_are_delivered(
    cluster: RedisClusterServers,
) -> None:
    from redis.crc import key_slot

    from creditgate.core.redis_settings import parse_redis

    record = {"cluster_nodes": [{"ip": h, "port": p} for h, p in cluster.nodes], "read_timeout": 1000}
    admin = Admin(RedisStore.from_settings(parse_redis(record)))
    try:
        store = admin.store
        accounts = [f"acct-{i}" for i in range(12)]
        admin.apply_plan(Plan(name="pro", period=Period.MONTH, allowance=0))
        for account in accounts:
            admin.subscribe(account, "pro", starts_at=NOW - 86_400)
            admin.grant(account, 10)
            admin.set_alerts(account, Alerts(depleted=True))
            assert store.charge(ChargeRequest(account, 10, now=NOW)).allowed
            keys = store.keys.account(account)
            assert key_slot(keys.events.encode()) == key_slot(keys.state.encode())
        with receiver() as hook:
            dispatcher = Dispatcher(store, EventSettings(urls=(hook.url,), secret=SECRET))
            dispatcher.step(now=0)
            dispatcher.step(now=1)
        assert sorted(e["account"] for e in hook.got) == sorted(accounts)
        assert {e["type"] for e in hook.got} == {"balance.depleted"}
    finally:
        admin.close()


# Dead letters in bulk, counted, logged


def secret_url(hook: Receiver, token: str = "t0ps3cret") -> str:
    """The receiver's URL with a password and a token, as operators write them."""
    return hook.url.replace("http://", "http://ops:pa55word@") + f"?token={token}"


def bury(store: RedisStore, admin: Admin, accounts: list[str], urls: tuple[str, ...]) -> None:
    """One balance.depleted event per account, given up at every URL after a single attempt."""
    subscribe(admin, accounts[0])
    for account in accounts:
        admin.subscribe(account, "pro", starts_at=NOW - 86_400)
        admin.grant(account, 10)
        admin.set_alerts(account, Alerts(depleted=True))
        assert store.charge(ChargeRequest(account, 10, now=NOW)).allowed
    dispatcher = Dispatcher(store, EventSettings(urls=urls, secret=SECRET, attempts=1))
    dispatcher.step(now=0)


def metric(text: str, name: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[-1])


def secret_env() -> dict[str, str]:
    """The service with the events' secret (to sign replays) and no receiver of its own."""
    return {
        "CREDIT_GATE_ADMIN_TOKENS": ADMIN_TOKEN,
        "CREDIT_GATE_READ_TOKENS": READ_TOKEN,
        "CREDIT_GATE_EVENT_SECRET": SECRET,
    }


def test_dead_letters_replay_in_bulk_per_receiver_and_per_account_and_a_down_receiver_is_tried_once(
    admin: Admin, store: RedisStore, settings: RedisSettings
) -> None:
    with receiver(fail=10**6) as down, receiver(fail=3) as back:
        urls = (secret_url(down), secret_url(back))
        bury(store, admin, ["acme", "globex", "initech"], urls)
        assert down.refused == back.refused == 3 and back.fail == 0  # `back` answers from now on
        down.refused = 0
        with running_service(settings, secret_env()) as api:
            listed = api.call("GET", "/v1/events/dead-letters").json()["dead_letters"]
            assert len(listed) == 6
            shown = {d["url"] for d in listed}
            assert all("pa55word" not in u and "t0ps3cret" not in u for u in shown)
            back_shown = next(d["url"] for d in listed if f":{back.url.split(':')[2]}" in d["url"])
            only_globex = api.call("GET", "/v1/events/dead-letters", params={"account": "globex"}).json()
            assert {d["event"]["account"] for d in only_globex["dead_letters"]} == {"globex"}

            # Per account: globex's two letters; its letter to the down receiver fails and stays.
            globex = api.call("POST", "/v1/events/dead-letters/replay", json={"account": "globex"}).json()
            assert len(globex["delivered"]) == 1 and len(globex["failed"]) == 1 and globex["left"] == 1
            assert [e["account"] for e in back.got] == ["globex"]
            assert "t0ps3cret" not in json.dumps(globex) and "pa55word" not in json.dumps(globex)

            # Per receiver, named as the list shows it: the other two accounts' letters to `back`.
            to_back = api.call(
                "POST", "/v1/events/dead-letters/replay", json={"receiver": back_shown, "limit": 10}
            ).json()
            assert (len(to_back["delivered"]), to_back["failed"], to_back["left"]) == (2, [], 0)
            assert sorted(e["account"] for e in back.got) == ["acme", "globex", "initech"]

            # Everything left waits for the down receiver: tried once, the rest skipped.
            down.refused = 0
            rest = api.call("POST", "/v1/events/dead-letters/replay", json={}).json()
            assert (len(rest["failed"]), rest["skipped"], rest["left"]) == (1, 2, 3)
            assert down.refused == 1

            metrics = api.call("GET", "/metrics").text
            assert metric(metrics, "credit_gate_event_dead_letters") == 3
            replayed = 'credit_gate_event_deliveries_total{outcome="%s",via="replay"}'
            assert metric(metrics, replayed % "delivered") == 3
            assert metric(metrics, replayed % "failed") == 2  # one per call to the down receiver
            assert (
                metric(
                    metrics, 'credit_gate_event_deliveries_total{outcome="dead_lettered",via="dispatcher"}'
                )
                == 6
            )

            refused = api.call("POST", "/v1/events/dead-letters/replay", json={}, token=READ_TOKEN)
            assert refused.status_code == 403
            bad = api.call("POST", "/v1/events/dead-letters/replay", json={"limit": 0})
            assert bad.status_code == 422


def test_delivery_counts_and_the_dead_letters_waiting_outlive_the_service(
    settings: RedisSettings, store: RedisStore
) -> None:
    with receiver(fail=10**6) as hook:
        env = event_env(hook.url, CREDIT_GATE_EVENT_ATTEMPTS="2")
        with running_service(settings, env) as api:
            setup_accounts(api, ["acme"])
            assert store.charge(ChargeRequest("acme", 100)).allowed  # balance.low and balance.depleted
            wait_until(
                lambda: len(api.call("GET", "/v1/events/dead-letters").json()["dead_letters"]) == 2, 20, "two"
            )
        with running_service(settings, secret_env()) as again:  # a new process, no receiver configured
            metrics = again.call("GET", "/metrics").text
    counted = 'credit_gate_event_deliveries_total{outcome="%s",via="dispatcher"}'
    assert metric(metrics, counted % "failed") == 4
    assert metric(metrics, counted % "dead_lettered") == 2
    assert metric(metrics, counted % "delivered") == 0
    assert metric(metrics, "credit_gate_event_dead_letters") == 2


def test_every_failed_attempt_is_logged_with_the_receivers_secrets_hidden(
    admin: Admin, store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    with receiver(fail=10**6) as hook:
        url = secret_url(hook)
        subscribe(admin, "acme")
        admin.grant("acme", 10)
        admin.set_alerts("acme", Alerts(depleted=True))
        assert store.charge(ChargeRequest("acme", 10, now=NOW)).allowed
        dispatcher = Dispatcher(store, EventSettings(urls=(url,), secret=SECRET, attempts=2, backoff=1))
        with caplog.at_level(logging.DEBUG, logger="creditgate.service"):
            dispatcher.step(now=0)  # failed: attempt 2 in 1 s
            dispatcher.step(now=2)  # failed again: a dead letter
            from creditgate.ops.dead_letters import find_letters, replay_letters
            from creditgate.service.events import replay_session, sender

            with replay_session() as session:
                done = replay_letters(admin, find_letters(admin), sender(dispatcher.settings, session))
    assert len(done.failed) == 1 and hook.refused == 3
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in levels] == [logging.WARNING, logging.ERROR, logging.WARNING]
    for _, message in levels:
        assert "pa55word" not in message and "t0ps3cret" not in message, message
        assert f"127.0.0.1:{hook.url.split(':')[2].split('/')[0]}" in message  # which receiver, still
    assert "HTTP 503" in levels[0][1] and "a dead letter now" in levels[1][1] and "replayed" in levels[2][1]


def test_a_count_lost_to_redis_never_stops_delivery(store: RedisStore, admin: Admin) -> None:
    subscribe(admin, "acme")
    admin.grant("acme", 10)
    admin.set_alerts("acme", Alerts(depleted=True))
    assert store.charge(ChargeRequest("acme", 10, now=NOW)).allowed
    from creditgate.errors import StoreError

    def unavailable(outcome: str) -> None:
        raise StoreError("Redis failed")

    with receiver() as hook:
        dispatcher = Dispatcher(store, EventSettings(urls=(hook.url,), secret=SECRET), count=unavailable)
        dispatcher.step(now=0)
        dispatcher.step(now=1)
    assert [e["type"] for e in hook.got] == ["balance.depleted"]  # delivered once, the cursor moved on


def test_dead_letters_are_read_a_batch_a_command_each_once(
    admin: Admin, store: RedisStore, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """While a receiver is down letters pile up: one HGETALL of them all would hold Redis for all of them."""
    for i in range(1_200):
        event = {"id": f"evt_{i}", "account": f"acct-{i % 3}", "type": "balance.low"}
        letter = {"id": f"{i:024x}", "event": event, "url": "http://x.test/h", "dead_at": f"{i:06d}"}
        stored.put_dead_letter(store, letter)
    before = redis_server.command_calls(redis_client)
    letters = find_letters(admin, account="acct-1")
    sent = redis_server.command_calls(redis_client) - before
    assert [d["event"]["id"] for d in letters] == [f"evt_{i}" for i in range(1, 1_200, 3)]  # oldest first
    assert sent["hscan"] >= 1_200 // 500 and sent["hgetall"] == 0
