"""Redis Cluster: a client built on first use, that follows redirections and never re-sends a command.

The store runs on it unchanged (every script's keys share one account's hash tag, so one slot), but
for what spans slots, which the client's ``SlotKeyspace`` answers: the store marker is one key per
slot, scripts are sent with EVAL to the key's node, and Redis's clock is asked of that node.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis
from redis._parsers import Encoder
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.retry import Retry

from creditgate.core.redis_settings import RedisSettings
from creditgate.store.keys import Keys, slot_marker, slot_totals_prefix, store_markers
from creditgate.store.topology.base import (
    Client,
    Keyspace,
    Topology,
    common_options,
    no_retry,
    scheme,
    tls_options,
)


class Cluster(Topology):
    @staticmethod
    def accepts(settings: RedisSettings) -> bool:
        return settings.topology == "cluster"

    def client(self) -> LazyCluster:
        return LazyCluster(self._cluster)

    def describe(self) -> str:
        settings = self.settings
        return f"Redis Cluster {','.join(str(n) for n in settings.cluster_nodes)} ({scheme(settings)})"

    def _cluster(self) -> RedisCluster:
        """A Redis Cluster client that follows redirections but never re-sends a command after an error.

        - MOVED and ASK (and TRYAGAIN) answers mean the node did not run the command: following them
          cannot apply a charge twice. redis-py follows up to ``RedisClusterRequestTTL`` - 1 of them
          per command; Kong's ``cluster_max_redirections`` sets it.
        - A connection error or timeout leaves the outcome unknown: ``retry`` with 0 retries stops
          RedisCluster from running the command again (it would otherwise refresh the slot map and
          re-send up to 10 times). The slot map is still refreshed, so the next request finds the node
          that took the slot over.
        - ``require_full_coverage`` False: with a master down, accounts on the other masters' slots are
          still charged; those on its slots get the failure answer until a replica takes over. That
          holds for a client built while the master is down too (a plugin instance started then).
        """
        settings = self.settings
        client = RedisCluster(
            startup_nodes=[cast(Any, ClusterNode)(node.host, node.port) for node in settings.cluster_nodes],
            # While it is built, RedisCluster asks one node for the command table (COMMAND): that node
            # may be a dead master the slot map still names, so building may try the next ones (it
            # reads, it charges nothing). Charges get no retry: set right after.
            retry=Retry(NoBackoff(), len(settings.cluster_nodes)),
            require_full_coverage=False,
            ssl=settings.ssl,
            **common_options(settings),
            **tls_options(settings),
        )
        client.set_retry(no_retry())
        client.RedisClusterRequestTTL = settings.cluster_max_redirections + 1
        return client


class SlotKeyspace(Keyspace):
    """Keys spread over a Cluster's slots (the client is a ``LazyCluster``)."""

    # The index sets live on other slots than the account's hash: the store keeps them after the
    # script (``store/plan_index.py``).
    plan_index_in_scripts = False

    def marker(self, keys: Keys, account: str) -> str:
        """The marker on the slot of the account's keys, which the charge script can read."""
        return slot_marker(keys.prefix, account)

    # A script can only count into its own slot's totals; they are folded once the day is over.
    totals_in_scripts = False

    def totals_prefix(self, keys: Keys, account: str) -> str:
        """The totals of the account's slot, which its scripts can write (``<this>YYYYMMDD``)."""
        return slot_totals_prefix(keys.prefix, account)

    def mark_store(self, client: Client, keys: Keys) -> None:
        """Every slot's marker, in one pipeline (redis-py sends it to each node in one round trip)."""
        pipe = cast(Any, client).pipeline(transaction=False)
        for key in store_markers(keys.prefix):
            pipe.set(key, "1")
        pipe.execute()

    def store_marked(self, client: Client, keys: Keys) -> bool:
        """Whether every slot's marker is there, in one pipeline."""
        pipe = cast(Any, client).pipeline(transaction=False)
        for key in store_markers(keys.prefix):
            pipe.exists(key)
        return all(list(pipe.execute()))

    def run_script(self, client: Client, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA to the key's node, EVAL on NOSCRIPT (which caches the script on that node).

        Not redis-py's Script: its SCRIPT LOAD goes to every master, so with one master down no
        account could be charged until the script was known everywhere.
        """
        try:
            return client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return client.eval(script.script, len(keys), *keys, *args)

    def ask_time(self, client: Client, key: str) -> tuple[float, Any, float]:
        """TIME from the master of ``key``'s slot: each master has its own clock."""
        cluster: Any = cast(LazyCluster, client).cluster
        node = cluster.get_node_from_key(key)
        sent = time.time() * 1000
        return sent, cluster.execute_command("TIME", target_nodes=node), time.time() * 1000


class LazyCluster:
    """A RedisCluster built on first use, and built again on a later call if Redis was unreachable.

    redis-py's RedisCluster asks its seed nodes for the slot map in its constructor and raises when
    none answers; built eagerly, a plugin instance started during a Cluster outage would stay broken
    after the Cluster came back. Scripts are registered against this object: hashing a script needs
    only the encoder, and Script sends EVALSHA/SCRIPT LOAD through the attributes forwarded below.
    """

    keyspace: Keyspace = SlotKeyspace()

    def __init__(self, build: Callable[[], RedisCluster]) -> None:
        self._build = build
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()
        # The encoder RedisCluster builds for itself with its default options.
        self._encoder = cast(Any, Encoder)("utf-8", "strict", False)

    @property
    def cluster(self) -> RedisCluster:
        client = self._client
        if client is None:
            # Built outside the lock so that concurrent requests do not queue behind one attempt's
            # connect timeouts; the first to finish wins and the others close theirs.
            built = self._build()
            with self._lock:
                if self._client is None:
                    self._client = built
                    return built
                client = self._client
            built.close()
        return client

    def get_encoder(self) -> Any:
        return self._encoder

    def register_script(self, script: str) -> Script:
        return Script(cast(Any, self), script)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cluster, name)
