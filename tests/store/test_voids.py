"""A charge whose reply never reached the gate is charged and answered, or neither (store/voids.py).

The reply is held by a proxy in front of the real Redis, longer than the client's read timeout: the
script ran and charged, the client gave up, and the gate answered 503. The voider then gives the
charge back. A void that reaches Redis before its charge (the charge still queued) makes the charge
refuse, writing nothing.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.errors import StoreError, StoreTimeout
from creditgate.ops.admin import Admin
from creditgate.store.replies import as_text, charge_reply
from creditgate.store.store import RedisStore
from tests.money_support import dump_keys
from tests.redis_servers import RedisServer

pytestmark = pytest.mark.server


class HoldingProxy:
    """TCP proxy to Redis that, while ``holding``, keeps each reply from Redis for ``hold`` seconds
    before passing it on (a Redis reply slower than the client's wait, or one queued behind it)."""

    def __init__(self, target_port: int, hold: float) -> None:
        self.hold = hold
        self.holding = False
        self._target = target_port
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while True:
                ready, _, _ = select.select([source], [], [], 0.5)
                if not ready:
                    if self._stop:
                        return
                    continue
                data = source.recv(65536)
                if not data:
                    return
                if replies and self.holding:
                    time.sleep(self.hold)
                sink.sendall(data)
        except OSError:
            return
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.close()

    def close(self) -> None:
        self._stop = True
        self._listener.close()


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[HoldingProxy]:
    held = HoldingProxy(redis_server.port, hold=0.4)
    yield held
    held.close()


@pytest.fixture
def acme(admin: Admin) -> Admin:
    admin.apply_plan(Plan("pro", period=Period.NONE, allowance=0, prepaid=True))
    admin.subscribe("acme", "pro", starts_at=admin.now() - 10)
    admin.grant("acme", 100)
    return admin


def send_with_token(store: RedisStore, token: str, cost: int = 7) -> Any:
    request = ChargeRequest("acme", cost)
    reply = store._send_charge(request, 0, int(time.time()), token)
    return charge_reply(reply)[1]


def test_a_void_before_its_charge_makes_the_charge_refuse_and_write_nothing(
    acme: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    assert store.voider.void("acme", "t0k3n", acme.ledger_retention) == "voided"
    before = dump_keys(redis_client, "credit-gate:{acme}:*")
    result = send_with_token(store, "t0k3n")
    assert isinstance(result, StoreTimeout)  # deadline_passed: answered as a charge Redis ran too late
    assert dump_keys(redis_client, "credit-gate:{acme}:*") == before
    assert acme.account("acme").balance == 100


def test_a_void_after_its_charge_gives_it_back_once(acme: Admin, store: RedisStore) -> None:
    charged = send_with_token(store, "t0k3n")
    assert charged.allowed and acme.account("acme").balance == 93
    assert store.voider.void("acme", "t0k3n", acme.ledger_retention) == "given_back"
    assert store.voider.void("acme", "t0k3n", acme.ledger_retention) == "already"
    assert acme.account("acme").balance == 100
    kinds = [as_text(e.fields["kind"]) for e in store.ledger("acme")]
    assert kinds[-2:] == ["charge", "refund"]
    assert acme.verify_ledger("acme").ok


def test_a_reply_held_past_the_clients_wait_is_never_both_charged_and_refused(
    acme: Admin, proxy: HoldingProxy
) -> None:
    """The script runs at once and charges; its reply is held 400 ms against a 100 ms read timeout. The
    gate sees a timeout (a 503 for the client), and the charge is given back."""
    settings = RedisSettings(host="127.0.0.1", port=proxy.port, connect_timeout=1000, read_timeout=100)
    store = RedisStore.from_settings(settings)
    try:
        assert store.charge(ChargeRequest("acme", 7)).allowed  # the scripts are loaded, the clock learnt
        proxy.holding = True
        outcomes: list[bool | str] = []
        for _ in range(5):
            try:
                outcomes.append(store.charge(ChargeRequest("acme", 7)).allowed)
            except StoreError as error:
                outcomes.append(type(error).__name__)
        proxy.holding = False
        assert store.voider.drain(timeout=30)
    finally:
        store.close()
    print(
        "OUTCOMES",
        outcomes,
        [e for e in acme.ledger("acme")] if hasattr(acme, "ledger") else dir(acme),
        flush=True,
    )
    served = outcomes.count(True) + 1
    assert StoreTimeout.__name__ in outcomes
    # Every credit that left the balance belongs to a request that was answered as allowed.
    assert acme.account("acme").balance == 100 - 7 * served
    assert acme.verify_ledger("acme").ok
    assert store.voider.counts.given_back + store.voider.counts.voided == outcomes.count("StoreTimeout")


def test_a_charge_sent_while_redis_is_paused_past_its_deadline_is_voided(
    acme: Admin, redis_server: RedisServer
) -> None:
    """Redis paused: the charge waits in its queue, the client gives up; on resume the void and the
    charge both run, in either order, and the account is charged nothing."""
    settings = RedisSettings(host="127.0.0.1", port=redis_server.port, connect_timeout=1000, read_timeout=100)
    store = RedisStore.from_settings(settings)
    try:
        assert store.charge(ChargeRequest("acme", 7)).allowed

        def one() -> list[Any]:
            try:
                return [store.charge(ChargeRequest("acme", 7))]
            except StoreError as error:
                return [error]

        answers, _ = redis_server.while_paused(one)
        assert isinstance(answers[0], StoreTimeout)
        assert store.voider.drain(timeout=30)
    finally:
        store.close()
    assert acme.account("acme").balance == 93
    assert acme.verify_ledger("acme").ok


def test_only_a_charge_that_may_have_reached_redis_is_voided() -> None:
    from creditgate.errors import StoreDataError, StoreRefused, StoreUnavailable
    from creditgate.store.voids import maybe_sent

    def failed(error: StoreError, cause: str) -> StoreError:
        error.__cause__ = redis.exceptions.ConnectionError(cause)
        return error

    assert maybe_sent(StoreTimeout("Redis did not answer in time"))
    assert maybe_sent(failed(StoreError("Redis failed"), "Redis closed the connection"))
    assert not maybe_sent(failed(StoreError("Redis failed"), "connecting to ('127.0.0.1', 1): refused"))
    assert not maybe_sent(failed(StoreError("Redis failed"), "sending to Redis: broken pipe"))
    assert not maybe_sent(StoreUnavailable("circuit open", retry_after_ms=5))
    assert not maybe_sent(StoreRefused("READONLY", code="READONLY"))
    assert not maybe_sent(StoreDataError("BADDATA"))
