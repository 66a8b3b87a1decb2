"""Where Redis is and how to reach it: the plugin's ``redis`` record and the CLI's connection.

Kong's schema fragment for the record (``REDIS_FIELDS``), the parsed value (``RedisSettings``) and its
parser live together so that a new connection option is added in one place. Clients are built from
``RedisSettings`` by ``creditgate.store.redis_store.connect``, for the plugin and the CLI alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from creditgate.core.values import get_bool, get_int, get_str
from creditgate.errors import ConfigError


@dataclass(frozen=True)
class RedisSettings:
    """Where the balances live. Timeouts are milliseconds, as in Kong's own Redis settings."""

    host: str = "127.0.0.1"
    port: int = 6379
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    database: int = 0
    connect_timeout: int = 200
    read_timeout: int = 200
    ssl: bool = False
    ssl_verify: bool = True
    server_name: str | None = None
    ca_file: str | None = None


# The `redis` record of the plugin's Kong schema.
REDIS_FIELDS: list[dict[str, Any]] = [
    {
        "host": {
            "type": "string",
            "default": "127.0.0.1",
            "required": True,
            "description": "Redis host name or address.",
        }
    },
    {
        "port": {
            "type": "integer",
            "default": 6379,
            "required": True,
            "between": [1, 65535],
            "description": "Redis port.",
        }
    },
    {"username": {"type": "string", "description": "Redis ACL user name."}},
    {"password": {"type": "string", "referenceable": True, "description": "Redis password."}},
    {
        "database": {
            "type": "integer",
            "default": 0,
            "required": True,
            "between": [0, 15],
            "description": "Redis database number.",
        }
    },
    {
        "connect_timeout": {
            "type": "integer",
            "default": 200,
            "required": True,
            "between": [1, 60_000],
            "description": "Milliseconds to wait for a connection to Redis.",
        }
    },
    {
        "read_timeout": {
            "type": "integer",
            "default": 200,
            "required": True,
            "between": [1, 60_000],
            "description": "Milliseconds to wait for a Redis answer.",
        }
    },
    {
        "ssl": {
            "type": "boolean",
            "default": False,
            "required": True,
            "description": "Connect to Redis over TLS.",
        }
    },
    {
        "ssl_verify": {
            "type": "boolean",
            "default": True,
            "required": True,
            "description": "Verify the Redis server's TLS certificate.",
        }
    },
    {
        "server_name": {
            "type": "string",
            "description": "Name to verify in Redis's TLS certificate (SNI).",
        }
    },
    {
        "ca_file": {
            "type": "string",
            "description": "PEM file of the CA that signed Redis's certificate.",
        }
    },
]


def parse_redis(raw: Mapping[str, Any] | None) -> RedisSettings:
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ConfigError("redis must be a record of settings")
    where = "redis."
    settings = RedisSettings(
        host=get_str(raw, "host", "127.0.0.1", where) or "127.0.0.1",
        port=get_int(raw, "port", 6379, 1, 65535, where),
        username=get_str(raw, "username", None, where),
        password=get_str(raw, "password", None, where),
        database=get_int(raw, "database", 0, 0, 15, where),
        connect_timeout=get_int(raw, "connect_timeout", 200, 1, 60_000, where),
        read_timeout=get_int(raw, "read_timeout", 200, 1, 60_000, where),
        ssl=get_bool(raw, "ssl", False, where),
        ssl_verify=get_bool(raw, "ssl_verify", True, where),
        server_name=get_str(raw, "server_name", None, where),
        ca_file=get_str(raw, "ca_file", None, where),
    )
    return settings
