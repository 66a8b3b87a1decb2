"""READONLY on a Redis Cluster does not happen to the store: a master that a failover demoted answers
MOVED to every command that names a key, and redis-py's RedisCluster follows it.

A Cluster node checks whether it serves the key's slot before whether it is a replica that must refuse
writes (Redis's ``processCommand``), so a client with a stale slot map reaches the demoted master and is
redirected; the command did not run there, so the redirected charge is applied once, on the new master,
and the client's slot map names the new master from then on. Only a write that names no key gets
READONLY from a replica, and every script the store sends names its account's keys.

Each failover is a planned one (``CLUSTER FAILOVER`` on the replica: the master stops taking writes
until the replica has them all), on a real Cluster with a replica per master.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.policy import ChargeRequest
from creditgate.core.redis_settings import parse_redis
from creditgate.errors import StoreError, StoreTimeout
from creditgate.ops.admin import Admin
from creditgate.store.breaker import BreakerState, CircuitBreaker
from creditgate.store.store import RedisStore
from creditgate.store.topology.cluster import LazyCluster
from tests.redis_servers import RedisClusterServers, RedisServer, wait_until
from tests.store.test_breaker import FakeClock

pytestmark = pytest.mark.server


# One account per test, seeded once: the store marker on all 16,384 slots takes about a second to write.
ACCOUNTS = ("redirected", "in-flight")


@pytest.fixture(scope="module")
def replicated_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """Three masters with a replica each, shared by the module: each test fails over the master of
    its account's slot, which leaves a Cluster of the same shape (the old master is the replica)."""
    servers = RedisClusterServers(tmp_path_factory.mktemp("replicated"), replicas=1).start()
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def settings(replicated_cluster: RedisClusterServers) -> RedisSettings:
    """Settings of the Cluster, with each of ``ACCOUNTS`` given 1000 credits."""
    nodes = [{"ip": host, "port": port} for host, port in replicated_cluster.nodes]
    settings = parse_redis({"cluster_nodes": nodes, "connect_timeout": 1000, "read_timeout": 1000})
    admin = Admin(RedisStore.from_settings(settings))
    try:
        admin.apply_plan(Plan("pro"))
        for account in ACCOUNTS:
            admin.subscribe(account, "pro", starts_at=admin.now() - 10)
            admin.grant(account, 1000)
    finally:
        admin.close()
    return settings


def charge(store: RedisStore, account: str) -> StoreError | None:
    try:
        store.charge(ChargeRequest(account, 1))
    except StoreError as failure:
        return failure
    return None


def master_and_replica(cluster: RedisClusterServers, key: str) -> tuple[RedisServer, RedisServer]:
    """The master that holds ``key``'s slot, and its replica."""
    with cluster.client() as client:
        master = cluster.server_on(client.get_node_from_key(key).port)
    for server in cluster.servers:
        with server.client() as node:
            if node.info("replication").get("master_port") == master.port:
                return master, server
    raise AssertionError(f"the master on port {master.port} has no replica")


def replicating(server: RedisServer) -> bool:
    with server.client() as client:
        info = client.info("replication")
        return bool(info["role"] == "slave" and info["master_link_status"] == "up")


def planned_failover(old: RedisServer, new: RedisServer) -> None:
    """``CLUSTER FAILOVER`` on ``new``: it takes ``old``'s slots, and ``old`` becomes its replica."""
    wait_until(lambda: replicating(new), 10, "the replica's link to its master")  # after a failover
    with new.client() as client:
        client.execute_command("CLUSTER FAILOVER")
    wait_until(lambda: replicating(old), 10, "the old master to follow the new one")


def slot_owner(store: RedisStore, key: str) -> int:
    """The port of the master that ``store``'s slot map names for ``key``."""
    cluster: Any = cast(LazyCluster, store.client).cluster  # redis-py leaves get_node_from_key unannotated
    return int(cluster.get_node_from_key(key).port)


def evalsha_calls(server: RedisServer) -> tuple[int, int]:
    """EVALSHA commands ``server`` ran, and those it refused before running them (a redirection)."""
    with server.client() as client:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("rejected_calls", 0))


def test_a_stale_client_s_charge_is_redirected_by_the_demoted_master_and_charged_once_on_the_new_one(
    replicated_cluster: RedisClusterServers, settings: RedisSettings
) -> None:
    store = RedisStore.from_settings(settings, breaker=CircuitBreaker(1, 1000, clock=FakeClock()))
    admin = Admin(RedisStore.from_settings(settings))
    try:
        assert charge(store, "redirected") is None  # the store learns the slot map
        key = store.keys.account("redirected").state
        old, new = master_and_replica(replicated_cluster, key)
        planned_failover(old, new)
        assert slot_owner(store, key) == old.port  # stale: nothing told the store yet
        ran, refused = evalsha_calls(old)

        assert charge(store, "redirected") is None

        assert evalsha_calls(old) == (ran, refused + 1)  # the demoted master redirected it, ran nothing
        assert slot_owner(store, key) == new.port  # redis-py took the new owner from the MOVED reply
        # A redirection is no failure: one would have opened this breaker; nothing is counted.
        assert store.breaker is not None and store.breaker.state is BreakerState.CLOSED
        assert not any(store.redis_errors.counts.values())
        with new.client() as client:
            assert int(client.hget(key, "balance") or 0) == 1000 - 2
        assert admin.verify_ledger("redirected").replayed == 1000 - 2
    finally:
        store.close()
        admin.close()


def test_charges_in_flight_during_a_planned_failover_are_each_charged_once(
    replicated_cluster: RedisClusterServers, settings: RedisSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    store = RedisStore.from_settings(settings, breaker=CircuitBreaker(5, 1000))
    admin = Admin(RedisStore.from_settings(settings))
    outcomes: list[BaseException | None] = []
    stop = threading.Event()

    def keep_charging() -> None:
        while not stop.is_set():
            outcomes.append(charge(store, "in-flight"))

    charging = threading.Thread(target=keep_charging)
    try:
        assert charge(store, "in-flight") is None
        key = store.keys.account("in-flight").state
        old, new = master_and_replica(replicated_cluster, key)
        charging.start()
        wait_until(lambda: len(outcomes) >= 20, 10, "charges before the failover")
        _, redirected = evalsha_calls(old)
        started = time.monotonic()
        planned_failover(old, new)
        took = time.monotonic() - started
        during = len(outcomes)
        wait_until(lambda: len(outcomes) >= during + 20, 10, "charges after the failover")
        stop.set()
        charging.join()

        assert evalsha_calls(old)[1] > redirected, "no charge reached the demoted master"
        assert outcomes[-1] is None, "charging did not resume on the new master"
        refused = [error for error in outcomes if error is not None]
        # The old master holds writes back until the replica has them all: a charge can only be late.
        assert all(isinstance(error, StoreTimeout) for error in refused), refused
        assert store.voider.drain(10)  # a charge whose reply was lost is given back
        charged = 1 + outcomes.count(None)
        assert admin.account("in-flight").balance == 1000 - charged
        assert admin.verify_ledger("in-flight").replayed == 1000 - charged
        with capsys.disabled():
            print(
                f"\nplanned cluster failover ({took * 1000:.0f} ms to the old master's demotion): "
                f"{len(outcomes)} charges from a stale client, {len(refused)} refused, each charged once"
            )
    finally:
        stop.set()
        if charging.is_alive():
            charging.join()
        store.close()
        admin.close()
