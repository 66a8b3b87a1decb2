"""A standalone Redis over TLS: redis-py's SSL connections, with Kong's ``server_name`` for the
certificate. The hot path does not serve it (it speaks plain sockets): charges go through redis-py."""

from __future__ import annotations

import redis

from creditgate.core.redis_settings import RedisSettings
from creditgate.store.topology.base import (
    NamedSSLConnection,
    Topology,
    common_options,
    no_retry,
    server_url,
    tls_options,
)


class StandaloneTLS(Topology):
    @staticmethod
    def accepts(settings: RedisSettings) -> bool:
        return settings.topology == "standalone" and settings.ssl

    def client(self) -> redis.Redis:
        settings = self.settings
        client = redis.Redis(
            host=settings.host,
            port=settings.port,
            db=settings.database,
            retry=no_retry(),
            ssl=True,
            **common_options(settings),
            **tls_options(settings),
        )
        if settings.server_name:
            # The pool has made no connection yet: its connections will check server_name.
            pool = client.connection_pool
            pool.connection_class = NamedSSLConnection
            pool.connection_kwargs["ssl_server_name"] = settings.server_name
        return client

    def describe(self) -> str:
        return server_url(self.settings)
