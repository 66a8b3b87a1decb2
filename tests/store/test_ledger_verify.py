"""Ledger verification reads in batches: no Redis command of it reads more than 1000 entries, whatever the
ledger's length (``ledger_retention`` allows 10^7), and the check stays exact while charges, grants and
the retention's fold change the ledger between its batches.

The rule (store/ledger_check.py): the balance is checked as of the newest entry when the scan began
(``through``); a fold that takes entries not yet read is seen in the same MULTI as the next batch and
the replay goes on from its ``ledger_base``; a fold past ``through`` starts a new snapshot.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from itertools import islice

import pytest
import redis

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.core.redis_settings import parse_redis
from creditgate.errors import Conflict, StoreDataError
from creditgate.ops.admin import Admin
from creditgate.store.ledger_check import BATCH, LedgerScan, replay_ledger, stream_id
from creditgate.store.replies import as_text
from creditgate.store.store import RedisStore
from tests.conftest import Clock
from tests.redis_servers import RedisClusterServers, RedisServer

BIG = 300_000

# Appends ``ARGV[1]`` entries of amount ``ARGV[2]`` to a ledger inside Redis (a pipeline of 300,000
# XADDs takes seconds; this takes a fraction of one).
FILL = """
for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'kind', 'grant', 'amount', ARGV[2], 'balance', '0')
end
redis.call('HINCRBY', KEYS[2], 'balance', tonumber(ARGV[1]) * tonumber(ARGV[2]))
return redis.call('XLEN', KEYS[1])
"""


def fill(client: redis.Redis, store: RedisStore, account: str, entries: int, amount: int = 1) -> None:
    """``entries`` more entries of ``amount`` in the account's ledger, its balance moved to match."""
    keys = store.keys.account(account)
    for done in range(0, entries, 50_000):
        client.eval(FILL, 2, keys.ledger, keys.state, min(50_000, entries - done), amount)


@pytest.fixture
def prepaid(admin: Admin, clock: Clock) -> Admin:
    admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=0, prepaid=True))
    admin.subscribe("acme", "pro", starts_at=clock.now - 60)
    return admin


def charge(store: RedisStore, clock: Clock, retention: int, times: int = 1) -> None:
    for _ in range(times):
        assert store.charge(ChargeRequest("acme", 1, now=clock.now, ledger_retention=retention)).allowed


def fold_id(client: redis.Redis, store: RedisStore) -> tuple[int, int]:
    raw = client.hget(store.keys.account("acme").state, "ledger_base_id")
    return stream_id(as_text(raw)) if raw else (0, 0)


# Bounded commands, at the length the issue measured


@pytest.fixture(scope="module")
def logged_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this module's own that logs every command it runs, with its arguments
    (SLOWLOG with a threshold of 0 µs): the test reads what verification sent, command by command."""
    server = RedisServer(
        tmp_path_factory.mktemp("slowlog"),
        extra=["--slowlog-log-slower-than", "0", "--slowlog-max-len", "100000"],
    ).start()
    yield server
    server.stop()


@pytest.mark.server
def test_no_command_of_a_300000_entry_verification_reads_more_than_a_batch(logged_redis: RedisServer) -> None:
    settings = RedisSettings(host="127.0.0.1", port=logged_redis.port, read_timeout=5000)
    store = RedisStore.from_settings(settings)
    client = logged_redis.client()
    try:
        client.flushall()
        admin = Admin(store, ledger_retention=10_000_000)
        admin.grant("acme", 5)
        fill(client, store, "acme", BIG)
        client.slowlog_reset()
        check = admin.verify_ledger("acme")
        log = client.slowlog_get(100_000)
    finally:
        store.close()
        client.close()
    assert check.ok and (check.balance, check.entries) == (BIG + 5, BIG + 1)
    reads = [entry["command"].decode().split() for entry in log]  # no argument of these holds a space
    ranges = [r for r in reads if r[0].upper() in ("XRANGE", "XREVRANGE")]
    assert len(ranges) >= BIG // BATCH  # the ledger was read a batch at a time ...
    for command in ranges:  # ... and no command asked for more than a batch (before: one XRANGE - +)
        assert command[-2].upper() == "COUNT" and int(command[-1]) <= BATCH, command


def test_a_missing_entry_in_the_middle_of_a_long_ledger_is_found(
    prepaid: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    fill(redis_client, store, "acme", 30_000)
    assert prepaid.verify_ledger("acme").ok
    ledger = store.keys.account("acme").ledger
    middle = next(islice(store.ledger("acme"), 15_000, None))
    redis_client.xdel(ledger, middle.id)
    check = prepaid.verify_ledger("acme")
    assert not check.ok and (check.balance, check.replayed) == (30_000, 29_999)


def test_a_balance_changed_behind_the_ledgers_back_is_found(
    prepaid: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    fill(redis_client, store, "acme", 2_500)
    redis_client.hincrby(store.keys.account("acme").state, "balance", 7)
    check = prepaid.verify_ledger("acme")
    assert not check.ok and check.replayed == check.balance - 7


def test_an_amount_that_is_no_integer_is_bad_data_not_a_verdict(
    prepaid: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    fill(redis_client, store, "acme", 1_500)
    redis_client.xadd(store.keys.account("acme").ledger, {"kind": "grant", "amount": "1e3"})
    with pytest.raises(StoreDataError, match="amount is not an integer"):
        prepaid.verify_ledger("acme")


def test_an_empty_ledger_replays_to_its_base(prepaid: Admin, store: RedisStore) -> None:
    check = prepaid.verify_ledger("acme")
    assert check.ok and (check.entries, check.through) == (0, "")


# Folds and appends between batches


def test_appends_during_the_scan_are_left_to_the_next_check(
    prepaid: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock
) -> None:
    fill(redis_client, store, "acme", 450)
    scan = LedgerScan(store, "acme", batch=100)
    prepaid.grant("acme", 1_000)
    charge(store, clock, retention=10_000, times=5)
    while scan.step():
        prepaid.grant("acme", 3)
    result = scan.result()
    assert result.ok and result.balance == 450 and result.folds == 0
    later = prepaid.verify_ledger("acme")
    assert later.ok and later.balance == store.account_state("acme").balance > 450 + 1_000 - 5


def test_a_fold_that_takes_entries_the_scan_has_not_read_is_replayed_from_its_base(
    prepaid: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock
) -> None:
    fill(redis_client, store, "acme", 3_000)
    scan = LedgerScan(store, "acme", batch=100)
    assert scan.step()  # 200 entries read
    charge(store, clock, retention=100, times=3)  # each folds 256 of the oldest: 768 gone, past the cursor
    assert fold_id(redis_client, store) > scan.cursor
    while scan.step():
        pass
    result = scan.result()
    assert result.folds == 1 and result.ok
    assert result.balance == 3_000  # as of `through`: the three charges came after it
    folded = int(redis_client.hget(store.keys.account("acme").state, "ledger_base") or 0)
    assert result.ledger_base == folded >= 768 and result.entries == 3_000 - folded


def test_a_fold_of_entries_already_read_changes_nothing(
    prepaid: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock
) -> None:
    fill(redis_client, store, "acme", 3_000)
    scan = LedgerScan(store, "acme", batch=1_000)
    assert scan.step()  # 2000 entries read
    charge(store, clock, retention=2_700)  # past 2,700 + a slack of 168: folds the oldest 256
    assert (0, 0) < fold_id(redis_client, store) < scan.cursor
    while scan.step():
        pass
    result = scan.result()
    assert result.ok and result.folds == 0 and (result.ledger_base, result.entries) == (0, 3_000)


def test_a_fold_past_the_point_checked_takes_a_new_snapshot(
    prepaid: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock
) -> None:
    fill(redis_client, store, "acme", 300)
    scan = LedgerScan(store, "acme", batch=100)
    charge(store, clock, retention=100, times=150)  # every entry the snapshot saw is folded away
    assert fold_id(redis_client, store) > stream_id(scan.through)
    while scan.step():
        pass
    result = scan.result()
    assert result.ok and scan.snapshots == 2
    assert result.balance == 300 - 150  # as of the new snapshot


def test_a_ledger_folded_past_every_snapshot_is_a_conflict_not_a_wrong_answer(
    prepaid: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock
) -> None:
    fill(redis_client, store, "acme", 1_000)
    scan = LedgerScan(store, "acme", batch=10)
    with pytest.raises(Conflict, match="try again"):
        for _ in range(3):
            charge(store, clock, retention=100, times=150)
            scan.step()


def test_verification_racing_charges_grants_and_folds_is_exact_every_time(
    prepaid: Admin, store: RedisStore, redis_client: redis.Redis, clock: Clock
) -> None:
    fill(redis_client, store, "acme", 20_000)
    small = Admin(store, ledger_retention=500, clock=clock)
    stop = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        try:
            i = 0
            while not stop.is_set():
                if i % 4 == 0:
                    small.grant("acme", 2)
                else:
                    charge(store, clock, retention=500)
                i += 1
        except BaseException as error:  # the main thread reports it
            failures.append(error)

    writers = [threading.Thread(target=write) for _ in range(3)]
    for writer in writers:
        writer.start()
    try:
        replays = [replay_ledger(store, "acme", batch=50) for _ in range(40)]
    finally:
        stop.set()
        for writer in writers:
            writer.join(30)
    assert failures == []
    assert all(r.ok for r in replays), [r for r in replays if not r.ok][:3]
    assert replays[-1].ledger_base != 0  # the retention folded while the checks ran
    assert prepaid.verify_ledger("acme").ok


def test_a_bad_fold_id_is_bad_data(prepaid: Admin, store: RedisStore, redis_client: redis.Redis) -> None:
    redis_client.hset(store.keys.account("acme").state, "ledger_base_id", "yesterday")
    with pytest.raises(StoreDataError, match="ledger_base_id"):
        prepaid.verify_ledger("acme")


@pytest.mark.server
def test_on_a_cluster_the_batches_and_a_fold_between_them_replay_exactly(
    cluster: RedisClusterServers, clock: Clock
) -> None:
    """A Cluster pipeline's MULTI answers in raw form (a stream entry's fields as a flat list)."""
    record = {"cluster_nodes": [{"ip": h, "port": p} for h, p in cluster.nodes], "read_timeout": 2000}
    store = RedisStore.from_settings(parse_redis(record))
    try:
        admin = Admin(store, clock=clock)
        admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=0, prepaid=True))
        admin.subscribe("acme", "pro", starts_at=clock.now - 60)
        with cluster.client() as client:
            keys = store.keys.account("acme")
            client.eval(FILL, 2, keys.ledger, keys.state, 3_000, 1)
        scan = LedgerScan(store, "acme", batch=100)
        assert scan.step()
        charge(store, clock, retention=100, times=3)
        while scan.step():
            pass
        result = scan.result()
        assert result.ok and result.folds == 1 and result.balance == 3_000
        assert admin.verify_ledger("acme").ok
    finally:
        store.close()
