"""The Redis topologies credit-gate reaches, one module each: a new one is a module and its line here.

Each topology accepts its share of the settings (``Topology.accepts``), and the shares do not overlap:
the settings' fields choose the topology, as ``parse_redis`` documents, and ``ssl`` splits the
standalone one in two.
"""

from __future__ import annotations

from creditgate.core.redis_settings import RedisSettings
from creditgate.store.topology.base import Client, Keyspace, Topology, keyspace_of
from creditgate.store.topology.cluster import Cluster, LazyCluster
from creditgate.store.topology.sentinel import Sentinel
from creditgate.store.topology.standalone import Standalone
from creditgate.store.topology.tls import StandaloneTLS

TOPOLOGIES: tuple[type[Topology], ...] = (Standalone, StandaloneTLS, Sentinel, Cluster)

__all__ = [
    "TOPOLOGIES",
    "Client",
    "Keyspace",
    "LazyCluster",
    "Topology",
    "connect",
    "keyspace_of",
    "topology_for",
]


def topology_for(settings: RedisSettings) -> Topology:
    """The topology the settings describe."""
    accepting = [topology for topology in TOPOLOGIES if topology.accepts(settings)]
    if len(accepting) != 1:
        names = ", ".join(topology.__name__ for topology in accepting) or "none"
        raise ValueError(f"Redis settings must describe one topology, accepted by: {names}")
    return accepting[0](settings)


def connect(settings: RedisSettings) -> Client:
    """A client for the settings' topology (see ``Topology.client``)."""
    return topology_for(settings).client()
