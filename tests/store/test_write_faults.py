"""Redis refusing writes is an outage: READONLY (a node a failover demoted), OOM (maxmemory with
noeviction), MISCONF (a failed save), LOADING, BUSY and MASTERDOWN count as failures for the circuit
breaker, by cause for the node report; a connection that answered READONLY is dropped, so that the
next charge connects again and follows the failover to wherever the address now leads.

Each fault is a real one, made in a real redis-server; LOADING and MASTERDOWN are classified by their
reply's code, on plain values.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis._parsers.base import BaseParser

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.policy import ChargeRequest
from creditgate.errors import StoreError, StoreUnavailable
from creditgate.ops.admin import Admin
from creditgate.store.breaker import BreakerState, CircuitBreaker
from creditgate.store.hot_path import pack
from creditgate.store.store import RedisStore
from tests.redis_servers import RedisServer, wait_until
from tests.store.test_breaker import FakeClock

# The replies as Redis 7 words them (a script's own error carries the script's name at its end), and
# as redis-py 8 raises the codes it knows: the code moved to ``status_code``, the text without it.
REPLIES = {
    "READONLY": "READONLY You can't write against a read only replica. script: 0abc, on @user_script:1.",
    "OOM": "OOM command not allowed when used memory > 'maxmemory'. script: 0abc, on @user_script:1.",
    "MISCONF": "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist "
    "to disk.",
    "LOADING": "LOADING Redis is loading the dataset in memory",
    "BUSY": "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "MASTERDOWN": "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
}


@pytest.mark.parametrize("code", sorted(REPLIES))
def test_each_write_fault_is_known_by_its_reply_s_code(code: str) -> None:
    from creditgate.store.replies import write_fault

    text = REPLIES[code]
    assert write_fault(redis.exceptions.ResponseError(text)) == code  # the hot path's, and unknown codes
    parsed = BaseParser.parse_error(text)  # type: ignore[no-untyped-call]  # what redis-py raises for it
    assert write_fault(parsed) == code


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ResponseError("ERR unknown command 'FOO'"),
        redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        redis.exceptions.ResponseError("BADDATA {acme}:state balance: is not an integer"),
        redis.exceptions.ResponseError("BUSYKEY Target key name already exists."),
        redis.exceptions.ResponseError("ERR Error running script: OOM is mentioned, not the code"),
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        ValueError("READONLY"),  # not Redis's
    ],
)
def test_other_errors_are_no_write_fault(error: BaseException) -> None:
    from creditgate.store.replies import write_fault

    assert write_fault(error) is None


# Real faults in a real Redis.


@dataclass
class Fault:
    """A write fault made in ``server`` (``code`` is the reply's), and its repair."""

    code: str
    make: Callable[[RedisServer, Path], None]
    heal: Callable[[RedisServer], None]


def fail_over(old: RedisServer, new: RedisServer) -> None:
    """What Sentinel or an operator does on a failover: ``new`` takes ``old``'s data and becomes the
    master, and ``old`` is demoted to its replica."""
    with new.client() as promoted, old.client() as demoted:
        demoted.config_set("repl-diskless-sync-delay", 0)  # else the sync waits 5 s for more replicas
        promoted.replicaof("127.0.0.1", old.port)
        wait_until(
            lambda: promoted.info("replication")["master_link_status"] == "up", 10, "the replica's sync"
        )
        promoted.replicaof("NO", "ONE")
        demoted.replicaof("127.0.0.1", new.port)


_REPLICAS: list[RedisServer] = []


def demote(server: RedisServer, scratch: Path) -> None:
    replica = RedisServer(scratch / "new-master").start()
    _REPLICAS.append(replica)
    fail_over(server, replica)


def promote(server: RedisServer) -> None:
    with server.client() as client:
        client.replicaof("NO", "ONE")


def fill_to_maxmemory(server: RedisServer, _scratch: Path) -> None:
    with server.client() as client:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1mb")
        for n in range(1000):  # 10 MB at most: a fresh Redis uses about 1 MB already
            try:
                client.set(f"filler:{n}", "x" * 10_000)
            except redis.exceptions.OutOfMemoryError:
                return
    raise AssertionError("Redis never reached its maxmemory")


def lift_maxmemory(server: RedisServer) -> None:
    with server.client() as client:
        client.config_set("maxmemory", "0")


def fail_a_save(server: RedisServer, _scratch: Path) -> None:
    """A save that cannot write its file (the file's place is taken by a directory: a full or read-only
    disk does the same, and this fails for root too), on a Redis that stops writes when a save fails."""
    blocked = server.directory / "dump.rdb"
    blocked.mkdir()
    (blocked / "taken").write_text("")
    with server.client() as client:
        client.config_set("save", "3600 1")
        client.config_set("stop-writes-on-bgsave-error", "yes")
        client.bgsave()
        wait_until(
            lambda: client.info("persistence")["rdb_last_bgsave_status"] == "err", 10, "the save to fail"
        )


def save_again(server: RedisServer) -> None:
    shutil.rmtree(server.directory / "dump.rdb")
    with server.client() as client:
        client.bgsave()
        wait_until(lambda: client.info("persistence")["rdb_last_bgsave_status"] == "ok", 10, "a save")


_BUSY: list[socket.socket] = []


def run_a_long_script(server: RedisServer, _scratch: Path) -> None:
    with server.client() as client:
        client.config_set("busy-reply-threshold", "10")  # lua-time-limit: BUSY after 10 ms
        endless = socket.create_connection(("127.0.0.1", server.port))
        endless.sendall(pack("EVAL", "while true do end", 0))
        _BUSY.append(endless)
        wait_until(lambda: _busy(client), 10, "Redis to answer BUSY")


def _busy(client: redis.Redis) -> bool:
    try:
        client.get("anything")
    except redis.exceptions.ResponseError as error:
        return str(error).startswith("BUSY")
    return False


def kill_the_script(server: RedisServer) -> None:
    with server.client() as client:
        client.script_kill()
        wait_until(lambda: not _busy(client), 10, "the script to end")  # it ends at its next check
    _BUSY.pop().close()


FAULTS = {
    "READONLY": Fault("READONLY", demote, promote),
    "OOM": Fault("OOM", fill_to_maxmemory, lift_maxmemory),
    "MISCONF": Fault("MISCONF", fail_a_save, save_again),
    "BUSY": Fault("BUSY", run_a_long_script, kill_the_script),
}


@pytest.fixture
def redis_timeout_ms() -> int:
    return 500


@pytest.fixture(autouse=True)
def _stop_new_masters() -> Iterator[None]:
    yield
    while _REPLICAS:
        _REPLICAS.pop().stop()
    while _BUSY:
        _BUSY.pop().close()


def charge(store: RedisStore) -> BaseException | None:
    try:
        store.charge(ChargeRequest("acme", 1))
    except StoreError as failure:
        return failure
    return None


@pytest.mark.parametrize("code", sorted(FAULTS))
def test_a_write_fault_opens_the_circuit_and_charging_resumes_once_it_heals(
    code: str, own_redis: RedisServer, own_settings: RedisSettings, funded: Admin, tmp_path: Path
) -> None:
    fault = FAULTS[code]
    clock = FakeClock()
    store = RedisStore.from_settings(own_settings, breaker=CircuitBreaker(2, 1000, clock=clock))
    try:
        assert charge(store) is None
        fault.make(own_redis, tmp_path)
        refused = [charge(store) for _ in range(3)]
        assert [type(error) is StoreUnavailable for error in refused] == [False, False, True]
        assert all(code in str(error) for error in refused[:2])
        assert store.breaker is not None and store.breaker.state is BreakerState.OPEN
        assert store.redis_errors.counts[code.lower()] == 2
        fault.heal(own_redis)
        clock.now += 1  # the cool-down is over: the next charge probes Redis
        assert charge(store) is None
        assert store.breaker.state is BreakerState.CLOSED  # type: ignore[comparison-overlap]
        assert funded.account("acme").balance == 1000 - 2
    finally:
        store.close()


# A failover that the address follows: the store's socket path is a link that the operator (or the
# platform's DNS, for a host name) moves to the new master.


@pytest.fixture
def masters(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    short = Path(os.path.realpath("/tmp")) / f"cg-{os.getpid()}-{time.monotonic_ns()}"
    short.mkdir()
    old = RedisServer(tmp_path / "old", unix_socket=short / "old.sock").start()
    new = RedisServer(tmp_path / "new", unix_socket=short / "new.sock").start()
    yield old, new
    old.stop()
    new.stop()
    shutil.rmtree(short, ignore_errors=True)


def point(link: Path, server: RedisServer) -> None:
    """Move ``link`` to ``server``'s socket in one rename, as a DNS record moves."""
    assert server.unix_socket is not None
    staged = link.with_name(link.name + ".new")
    staged.unlink(missing_ok=True)
    staged.symlink_to(server.unix_socket)
    staged.replace(link)


def seed(settings: RedisSettings) -> None:
    admin = Admin(RedisStore.from_settings(settings))
    try:
        admin.apply_plan(Plan("pro"))
        admin.subscribe("acme", "pro", starts_at=admin.now() - 10)
        admin.grant("acme", 1000)
    finally:
        admin.close()


@pytest.mark.server
def test_after_a_failover_one_charge_meets_readonly_and_the_next_charges_the_new_master(
    masters: tuple[RedisServer, RedisServer],
) -> None:
    old, new = masters
    assert old.unix_socket is not None
    link = old.unix_socket.with_name("redis.sock")
    point(link, old)
    settings = RedisSettings(socket_path=str(link), connect_timeout=500, read_timeout=500)
    seed(settings)
    store = RedisStore.from_settings(settings, breaker=CircuitBreaker(3, 1000, clock=FakeClock()))
    try:
        assert charge(store) is None
        fail_over(old, new)
        point(link, new)
        refused = charge(store)  # sent on the connection to the demoted node
        assert refused is not None and "READONLY" in str(refused)
        assert charge(store) is None  # on a new connection, which the link took to the new master
        with new.client() as client:
            assert int(client.hget(store.keys.account("acme").state, "balance") or 0) == 1000 - 2
    finally:
        store.close()
