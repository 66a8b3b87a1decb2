"""Money under concurrency: one idempotency key counts once however the grants race, and the ledger
replays to the balance while charges and grants hit one account at once."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from functools import partial

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.cli_support import CONSOLE_SCRIPT, redis_url

T0 = 1_767_225_600


def race(workers: list[Callable[[], object]]) -> None:
    """Start every worker at the same moment and wait for all."""
    barrier = threading.Barrier(len(workers))

    def run(work: Callable[[], object]) -> None:
        barrier.wait()
        work()

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def test_racing_grants_with_one_key_count_once(admin: Admin, store: RedisStore) -> None:
    admin.apply_plan(Plan("pro"))
    admin.subscribe("acme", "pro")
    results = []
    race([lambda: results.append(admin.grant("acme", 7, idempotency_key="in_1")) for _ in range(50)])
    assert store.account_state("acme").balance == 7
    assert sum(r.applied for r in results) == 1
    assert len({r.ledger_id for r in results}) == 1
    assert [e.fields["kind"] for e in store.ledger("acme")] == ["grant"]


def test_racing_console_scripts_with_one_key_count_once(
    admin: Admin, store: RedisStore, settings: RedisSettings
) -> None:
    admin.apply_plan(Plan("pro"))
    admin.subscribe("acme", "pro")
    argv = [CONSOLE_SCRIPT, "--redis-url", redis_url(settings), "grant", "acme", "25", "--key", "stripe:in_9"]
    processes = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)
    ]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0] * 8
    assert sum(out.startswith("Granted 25 credits") for out, _ in outputs) == 1
    assert sum("was already applied" in out for out, _ in outputs) == 7
    assert store.account_state("acme").balance == 25


def test_concurrent_charges_and_grants_keep_the_ledger_replaying_to_the_balance(
    admin: Admin, store: RedisStore
) -> None:
    admin.apply_plan(Plan("mix", period=Period.DAY, allowance=20, prepaid=True))
    admin.subscribe("acme", "mix", starts_at=T0)
    admin.grant("acme", 50)
    # redis-py's pool holds 100 connections: every worker below has one at the same moment.
    allowed: list[bool] = []
    lock = threading.Lock()

    def charge(i: int) -> None:
        result = store.charge(ChargeRequest("acme", 1 + i % 3, now=T0 + i, ledger_retention=100))
        with lock:
            allowed.append(result.allowed)

    small = Admin(store, ledger_retention=100, clock=admin.clock)
    for _ in range(100):  # a full ledger, so that retention folds entries during the race
        small.grant("acme", 1)
    workers: list[Callable[[], object]] = [partial(charge, i) for i in range(60)]
    workers += [partial(small.grant, "acme", 5, idempotency_key=f"g{i % 20}") for i in range(30)]
    workers += [lambda: checks.append(small.verify_ledger("acme")) for _ in range(5)]
    checks: list[object] = []
    race(workers)

    final = admin.verify_ledger("acme")
    assert final.ok, final
    assert all(getattr(c, "ok", False) for c in checks)  # also every snapshot taken mid-race
    assert final.balance >= 0
    assert final.ledger_base != 0  # retention folded entries while the race went on
    assert 0 < sum(allowed) <= 60
    assert store.client.hlen(store.keys.account("acme").idempotency) == 20  # thirty grants, twenty keys
