"""A standalone Redis without TLS, on TCP or its unix socket: the one topology the hot path serves.

The charge goes over the hot path's own sockets (``store/hot_path.py``), a quarter of redis-py's CPU
per charge; everything else goes through redis-py.
"""

from __future__ import annotations

import hashlib

import redis

from creditgate.core.redis_settings import RedisSettings
from creditgate.store.hot_path import HotPath
from creditgate.store.replies import CHARGE_VARYING
from creditgate.store.topology.base import Client, Topology, common_options, no_retry, server_url, user


class Standalone(Topology):
    @staticmethod
    def accepts(settings: RedisSettings) -> bool:
        return settings.topology == "standalone" and not settings.ssl

    def client(self) -> redis.Redis:
        settings = self.settings
        if settings.socket_path:
            return redis.Redis(
                unix_socket_path=settings.socket_path,
                db=settings.database,
                retry=no_retry(),
                **common_options(settings),
            )
        return redis.Redis(
            host=settings.host,
            port=settings.port,
            db=settings.database,
            retry=no_retry(),
            **common_options(settings),
        )

    def describe(self) -> str:
        settings = self.settings
        if settings.socket_path:
            return f"unix://{user(settings)}{settings.socket_path}?db={settings.database}"
        return server_url(settings)

    def hot_path(self, client: Client, charge_script: str) -> HotPath:
        def load() -> str:
            """SCRIPT LOAD through the client, after a NOSCRIPT (see HotPath.evalsha)."""
            sha: str = client.script_load(charge_script)
            return sha

        # The script's SHA1, as SCRIPT LOAD answers it: known before any round trip.
        sha = hashlib.sha1(charge_script.encode()).hexdigest()
        return HotPath(self.settings, sha, load, charge_script, varying_args=CHARGE_VARYING)
