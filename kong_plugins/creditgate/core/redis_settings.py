"""Where Redis is and how to reach it: the plugin's ``redis`` record and the CLI's connection.

Kong's schema fragment for the record (``REDIS_FIELDS``), the parsed value (``RedisSettings``) and its
parser live together so that a new connection option is added in one place. Clients are built from
``RedisSettings`` by the topology's class (``creditgate.store.topology``), for the plugin and the CLI
alike.

Three topologies, chosen by which fields are set (the names are Kong's own, from the Redis settings of
its Enterprise plugins):

- standalone: ``host`` and ``port``, or ``socket_path`` for a Redis on the same host (its unix
  socket: no TCP stack, about a third less CPU per round trip than loopback TCP);
- Sentinel: ``sentinel_master`` and ``sentinel_nodes`` (the master is asked of the sentinels);
- Cluster: ``cluster_nodes`` (seed nodes; the slot map is asked of them).

TLS (``ssl``, ``ssl_verify``, ``ca_file``, ``server_name``) applies to every topology but the unix
socket, the ACL user (``username``, ``password``) to all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from creditgate.core.fields import Fields, between, declared, default
from creditgate.core.values import as_list, get_bool, get_int, get_str
from creditgate.errors import ConfigError

# The kind of Redis the settings describe (``RedisSettings.topology``), by name.
TopologyName = Literal["standalone", "sentinel", "cluster"]

# Values several of the record's fields declare: the address of Redis, of a sentinel and of a Cluster
# node, and both timeouts.
LOCALHOST = "127.0.0.1"
REDIS_PORT = 6379
SENTINEL_PORT = 26379
PORTS = [1, 65535]
TIMEOUTS_MS = [1, 60_000]


@dataclass(frozen=True)
class Node:
    """A sentinel or a Cluster seed node."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# The `redis` record of the plugin's Kong schema.
REDIS_FIELDS: list[dict[str, Any]] = [
    {
        "host": {
            "type": "string",
            "default": LOCALHOST,
            "required": True,
            "description": "Redis host name or address.",
        }
    },
    {
        "port": {
            "type": "integer",
            "default": REDIS_PORT,
            "required": True,
            "between": PORTS,
            "description": "Redis port.",
        }
    },
    {
        "socket_path": {
            "type": "string",
            "description": "Absolute path of Redis's unix socket (`unixsocket` in redis.conf), for a Redis "
            "on the same host: cheaper than TCP. host and port are then ignored; not with TLS, Sentinel "
            "or Cluster.",
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
            "between": TIMEOUTS_MS,
            "description": "Milliseconds to wait for a connection to Redis.",
        }
    },
    {
        "read_timeout": {
            "type": "integer",
            "default": 200,
            "required": True,
            "between": TIMEOUTS_MS,
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
    {
        "sentinel_master": {
            "type": "string",
            "description": "Sentinel: the name of the monitored master (as in sentinel.conf). "
            "Set it with sentinel_nodes; host and port are then ignored.",
        }
    },
    {
        "sentinel_nodes": {
            "type": "array",
            "elements": {
                "type": "record",
                "fields": [
                    {
                        "host": {
                            "type": "string",
                            "default": LOCALHOST,
                            "required": True,
                            "description": "A sentinel's host name or address.",
                        }
                    },
                    {
                        "port": {
                            "type": "integer",
                            "default": SENTINEL_PORT,
                            "required": True,
                            "between": PORTS,
                            "description": "A sentinel's port.",
                        }
                    },
                ],
            },
            "description": "Sentinel: the sentinels asked for the current master's address.",
        }
    },
    {
        "sentinel_username": {
            "type": "string",
            "description": "Sentinel: ACL user name on the sentinels, if they require one.",
        }
    },
    {
        "sentinel_password": {
            "type": "string",
            "referenceable": True,
            "description": "Sentinel: password on the sentinels, if they require one.",
        }
    },
    {
        "cluster_nodes": {
            "type": "array",
            "elements": {
                "type": "record",
                "fields": [
                    {
                        "ip": {
                            "type": "string",
                            "default": LOCALHOST,
                            "required": True,
                            "description": "A Cluster node's host name or address.",
                        }
                    },
                    {
                        "port": {
                            "type": "integer",
                            "default": REDIS_PORT,
                            "required": True,
                            "between": PORTS,
                            "description": "A Cluster node's port.",
                        }
                    },
                ],
            },
            "description": "Redis Cluster: seed nodes the slot map is learnt from (any few nodes will do). "
            "host, port and database are then ignored.",
        }
    },
    {
        "cluster_max_redirections": {
            "type": "integer",
            "default": 5,
            "required": True,
            "between": [1, 100],
            "description": "Redis Cluster: MOVED/ASK/TRYAGAIN redirections followed for one command "
            "(a redirected command was not run, so following it never charges twice).",
        }
    },
]


SENTINEL_NODE_FIELDS: Fields = declared("sentinel_nodes", REDIS_FIELDS)["elements"]["fields"]
CLUSTER_NODE_FIELDS: Fields = declared("cluster_nodes", REDIS_FIELDS)["elements"]["fields"]


@dataclass(frozen=True)
class RedisSettings:
    """Where the balances live. Timeouts are milliseconds, as in Kong's own Redis settings. The
    defaults are the record's (``REDIS_FIELDS``), so that a settings value built in Python is the one
    that Kong's defaults parse to."""

    host: str = default("host", REDIS_FIELDS)
    port: int = default("port", REDIS_FIELDS)
    socket_path: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    database: int = default("database", REDIS_FIELDS)
    connect_timeout: int = default("connect_timeout", REDIS_FIELDS)
    read_timeout: int = default("read_timeout", REDIS_FIELDS)
    ssl: bool = default("ssl", REDIS_FIELDS)
    ssl_verify: bool = default("ssl_verify", REDIS_FIELDS)
    server_name: str | None = None
    ca_file: str | None = None
    sentinel_master: str | None = None
    sentinel_nodes: tuple[Node, ...] = ()
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    cluster_nodes: tuple[Node, ...] = ()
    cluster_max_redirections: int = default("cluster_max_redirections", REDIS_FIELDS)

    @property
    def topology(self) -> TopologyName:
        if self.cluster_nodes:
            return "cluster"
        if self.sentinel_master:
            return "sentinel"
        return "standalone"


def _int(raw: Mapping[str, Any], name: str, fields: Fields = REDIS_FIELDS, where: str = "redis.") -> int:
    low, high = between(name, fields)
    return get_int(raw, name, default(name, fields), low, high, where)


def _bool(raw: Mapping[str, Any], name: str) -> bool:
    return get_bool(raw, name, default(name, REDIS_FIELDS), "redis.")


def _nodes(raw: Mapping[str, Any], name: str, host_field: str, node_fields: Fields) -> tuple[Node, ...]:
    value = as_list(raw.get(name))  # {}: an empty array as some of Kong's encoders send it
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"redis.{name} must be a list of {{{host_field}, port}} records, got {value!r}")
    nodes: list[Node] = []
    for i, item in enumerate(value):
        where = f"redis.{name}[{i}]."
        if not isinstance(item, Mapping):
            raise ConfigError(f"redis.{name}[{i}] must be a {{{host_field}, port}} record, got {item!r}")
        host_default = default(host_field, node_fields)
        host = get_str(item, host_field, host_default, where) or host_default
        nodes.append(Node(host, _int(item, "port", node_fields, where)))
    if len(set(nodes)) != len(nodes):
        raise ConfigError(f"redis.{name} lists a node twice: {', '.join(map(str, nodes))}")
    return tuple(nodes)


def parse_redis(raw: Mapping[str, Any] | None) -> RedisSettings:
    """The ``redis`` record, with the rules across its fields that Kong's schema cannot state."""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ConfigError("redis must be a record of settings")
    where = "redis."
    host_default = default("host", REDIS_FIELDS)
    settings = RedisSettings(
        host=get_str(raw, "host", host_default, where) or host_default,
        port=_int(raw, "port"),
        socket_path=get_str(raw, "socket_path", None, where),
        username=get_str(raw, "username", None, where),
        password=get_str(raw, "password", None, where),
        database=_int(raw, "database"),
        connect_timeout=_int(raw, "connect_timeout"),
        read_timeout=_int(raw, "read_timeout"),
        ssl=_bool(raw, "ssl"),
        ssl_verify=_bool(raw, "ssl_verify"),
        server_name=get_str(raw, "server_name", None, where),
        ca_file=get_str(raw, "ca_file", None, where),
        sentinel_master=get_str(raw, "sentinel_master", None, where),
        sentinel_nodes=_nodes(raw, "sentinel_nodes", "host", SENTINEL_NODE_FIELDS),
        sentinel_username=get_str(raw, "sentinel_username", None, where),
        sentinel_password=get_str(raw, "sentinel_password", None, where),
        cluster_nodes=_nodes(raw, "cluster_nodes", "ip", CLUSTER_NODE_FIELDS),
        cluster_max_redirections=_int(raw, "cluster_max_redirections"),
    )
    _check_topology(settings)
    return settings


def _check_topology(settings: RedisSettings) -> None:
    if settings.socket_path is not None:
        _check_socket_path(settings)
    sentinel = bool(settings.sentinel_master or settings.sentinel_nodes)
    if settings.sentinel_master and not settings.sentinel_nodes:
        raise ConfigError(
            "redis.sentinel_master is set but redis.sentinel_nodes is empty: list the sentinels "
            "({host, port}) that know the master"
        )
    if settings.sentinel_nodes and not settings.sentinel_master:
        raise ConfigError(
            "redis.sentinel_nodes is set but redis.sentinel_master is not: give the master's name "
            "as the sentinels know it (sentinel.conf `sentinel monitor <name> ...`)"
        )
    if not sentinel and (settings.sentinel_username or settings.sentinel_password):
        raise ConfigError(
            "redis.sentinel_username/sentinel_password are set without redis.sentinel_master: "
            "they are only used to talk to sentinels"
        )
    if sentinel and settings.cluster_nodes:
        raise ConfigError(
            "redis has both sentinel (sentinel_master, sentinel_nodes) and cluster_nodes set: "
            "choose one topology"
        )
    if settings.cluster_nodes and settings.database != 0:
        raise ConfigError(
            f"redis.database is {settings.database} but Redis Cluster has only database 0: "
            "set database to 0 (or remove cluster_nodes)"
        )
    if settings.cluster_nodes and settings.ssl and settings.server_name:
        # redis-py builds each Cluster node's connection itself and checks its certificate against
        # the address the cluster reports for the node; it has no hook for another name.
        raise ConfigError(
            "redis.server_name cannot be used with cluster_nodes: each node's certificate is checked "
            "against the address the cluster announces for it (cluster-announce-hostname); "
            "remove server_name"
        )


def _check_socket_path(settings: RedisSettings) -> None:
    path = settings.socket_path or ""
    if not path.startswith("/"):
        raise ConfigError(
            f"redis.socket_path must be an absolute path (the plugin server's working directory is "
            f"Kong's), got {path!r}"
        )
    if settings.sentinel_master or settings.sentinel_nodes or settings.cluster_nodes:
        raise ConfigError(
            "redis.socket_path reaches one Redis on this host: it cannot be combined with "
            "sentinel_master/sentinel_nodes or cluster_nodes"
        )
    if settings.ssl:
        raise ConfigError(
            "redis.ssl is on with redis.socket_path: Redis serves TLS on TCP ports only; "
            "a unix socket stays on this host (turn ssl off, or use host and port)"
        )
