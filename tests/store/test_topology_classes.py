"""Each Redis topology in one class: the settings that choose it, how it describes where Redis is,
and whether the charge's own transport serves it. Plain values: nothing here talks to Redis (clients
connect on first use)."""

from __future__ import annotations

from typing import Any

import pytest

from creditgate.core.redis_settings import parse_redis
from creditgate.ops.redis_url import describe
from creditgate.store.keys import Keys, slot_marker
from creditgate.store.topology import TOPOLOGIES, Topology, keyspace_of, topology_for
from creditgate.store.topology.base import ONE_SERVER
from creditgate.store.topology.cluster import Cluster, SlotKeyspace
from creditgate.store.topology.sentinel import Sentinel
from creditgate.store.topology.standalone import Standalone
from creditgate.store.topology.tls import StandaloneTLS

SENTINELS = {"sentinel_master": "main", "sentinel_nodes": [{"host": "10.0.0.5", "port": 26379}]}
NODES = {"cluster_nodes": [{"ip": "10.0.0.1", "port": 7000}, {"ip": "10.0.0.2", "port": 7001}]}

# A record of the plugin's `redis` field, the topology it chooses, and how that topology says where it points.
CASES: list[tuple[dict[str, Any], type[Topology], str]] = [
    ({}, Standalone, "redis://127.0.0.1:6379/0"),
    (
        {"host": "::1", "port": 7000, "database": 3, "username": "gate"},
        Standalone,
        "redis://gate@[::1]:7000/3",
    ),
    ({"socket_path": "/run/redis.sock", "database": 2}, Standalone, "unix:///run/redis.sock?db=2"),
    (
        {"host": "redis.example", "ssl": True, "server_name": "r1"},
        StandaloneTLS,
        "rediss://redis.example:6379/0",
    ),
    ({**SENTINELS, "database": 4}, Sentinel, "master 'main' of sentinels 10.0.0.5:26379 (redis, db 4)"),
    ({**SENTINELS, "ssl": True}, Sentinel, "master 'main' of sentinels 10.0.0.5:26379 (rediss, db 0)"),
    (NODES, Cluster, "Redis Cluster 10.0.0.1:7000,10.0.0.2:7001 (redis)"),
    ({**NODES, "ssl": True}, Cluster, "Redis Cluster 10.0.0.1:7000,10.0.0.2:7001 (rediss)"),
]


@pytest.mark.parametrize(("record", "topology", "description"), CASES)
def test_the_settings_fields_choose_exactly_one_topology(
    record: dict[str, Any], topology: type[Topology], description: str
) -> None:
    settings = parse_redis(record)
    assert [t for t in TOPOLOGIES if t.accepts(settings)] == [topology]
    assert type(topology_for(settings)) is topology


@pytest.mark.parametrize(("record", "topology", "description"), CASES)
def test_a_topology_describes_where_redis_is_and_never_the_password(
    record: dict[str, Any], topology: type[Topology], description: str
) -> None:
    secrets = {"password": "s3cret-pw"} | ({"sentinel_password": "s3cret-pw"} if topology is Sentinel else {})
    settings = parse_redis(record | secrets)
    assert describe(settings) == description
    assert "s3cret" not in describe(settings)


@pytest.mark.parametrize(("record", "topology", "description"), CASES)
def test_the_hot_path_serves_only_a_standalone_redis_without_tls(
    record: dict[str, Any], topology: type[Topology], description: str
) -> None:
    chosen = topology_for(parse_redis(record))
    client = chosen.client()
    try:
        hot_path = chosen.hot_path(client, "return 1")
        assert (hot_path is not None) == (topology is Standalone)
        if hot_path is not None:
            hot_path.close()
    finally:
        client.close()


@pytest.mark.parametrize(("record", "topology", "description"), CASES)
def test_only_a_cluster_client_spreads_the_store_marker_and_scripts_over_slots(
    record: dict[str, Any], topology: type[Topology], description: str
) -> None:
    client = topology_for(parse_redis(record)).client()  # connects on first use: nothing is sent
    try:
        keyspace = keyspace_of(client)
        keys = Keys("credit-gate")
        if topology is Cluster:
            assert type(keyspace) is SlotKeyspace
            assert keyspace.marker(keys, "acme") == slot_marker("credit-gate", "acme") != keys.store
        else:
            assert keyspace is ONE_SERVER
            assert keyspace.marker(keys, "acme") == keys.store
    finally:
        client.close()
