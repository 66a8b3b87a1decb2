"""A master found through Redis Sentinel (TLS and the ACL user apply to the master and the sentinels)."""

from __future__ import annotations

from typing import Any, cast

import redis
from redis.sentinel import Sentinel as SentinelClient
from redis.sentinel import SentinelManagedConnection

from creditgate.core.redis_settings import RedisSettings
from creditgate.store.topology.base import (
    NamedSSLConnection,
    Topology,
    common_options,
    no_retry,
    scheme,
    tls_options,
)


class NamedSentinelSSLConnection(SentinelManagedConnection, NamedSSLConnection):
    """A connection to the master a sentinel reports, TLS checked against ``server_name``."""


class Sentinel(Topology):
    @staticmethod
    def accepts(settings: RedisSettings) -> bool:
        return settings.topology == "sentinel"

    def client(self) -> redis.Redis:
        """The current master, as the sentinels report it.

        redis-py asks a sentinel for the master's address on each new connection; after a failover the
        old master's connections fail (connection refused, or READONLY, which redis-py's
        SentinelManagedConnection turns into a ConnectionError and a reconnect), so the next request
        reaches the new master. Those failing requests are answered 503 (or passed through with
        fault_tolerant), never re-sent.
        """
        settings = self.settings
        sentinel_options: dict[str, Any] = {
            "username": settings.sentinel_username,
            "password": settings.sentinel_password,
            "socket_connect_timeout": settings.connect_timeout / 1000,
            "socket_timeout": settings.read_timeout / 1000,
            "retry": no_retry(),
            "health_check_interval": 0,
            "driver_info": None,
            "ssl": settings.ssl,
            **tls_options(settings),
        }
        sentinel = cast(Any, SentinelClient)(
            [(node.host, node.port) for node in settings.sentinel_nodes], sentinel_kwargs=sentinel_options
        )
        master_options: dict[str, Any] = {
            "db": settings.database,
            "retry": no_retry(),
            **common_options(settings),
            **tls_options(settings),
        }
        if settings.ssl and settings.server_name:
            master_options["connection_class"] = NamedSentinelSSLConnection
            master_options["ssl_server_name"] = settings.server_name
        else:
            master_options["ssl"] = settings.ssl
        master: redis.Redis = sentinel.master_for(settings.sentinel_master, **master_options)
        return master

    def describe(self) -> str:
        settings = self.settings
        nodes = ",".join(str(n) for n in settings.sentinel_nodes)
        return (
            f"master '{settings.sentinel_master}' of sentinels {nodes} "
            f"({scheme(settings)}, db {settings.database})"
        )
