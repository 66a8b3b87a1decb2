"""What a Redis topology answers, and the options every topology's data connections share.

A topology is one way of reaching credit-gate's Redis: a standalone server, the same over TLS, a
master found through Sentinel, a Cluster. Each is a small class in its own module (``standalone.py``,
``tls.py``, ``sentinel.py``, ``cluster.py``) that says, in one place, how to build its client, how to
describe where it points, and whether the charge's own transport (``store/hot_path.py``) serves it.
The store runs unchanged on every one, since every script's keys share one account's hash tag; what
spans more than one account's keys is its client's ``Keyspace``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol, TypeAlias, cast

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.connection import SSLConnection
from redis.retry import Retry

from creditgate.core.redis_settings import RedisSettings
from creditgate.store.hot_path import HotPath
from creditgate.store.keys import Keys, totals_prefix


class BuiltOnFirstUse(Protocol):
    """A client that builds the real one on first use and forwards it what it does not answer itself
    (``cluster.LazyCluster``). Described here rather than imported: the topologies import this module,
    never the reverse."""

    keyspace: Keyspace

    def register_script(self, script: str) -> Script: ...

    def close(self) -> None: ...

    def __getattr__(self, name: str) -> Any: ...


Client: TypeAlias = "redis.Redis | BuiltOnFirstUse"

MAX_CONNECTIONS = 4096  # per pool (per node on a Cluster); Redis's own default maxclients is 10000


class Topology(ABC):
    """One way of reaching Redis, for the settings it accepts (exactly one topology accepts any
    parsed settings: ``creditgate.store.topology.topology_for`` picks it)."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings

    @staticmethod
    @abstractmethod
    def accepts(settings: RedisSettings) -> bool:
        """Whether ``settings`` describe this topology."""

    @abstractmethod
    def client(self) -> Client:
        """A client with a connection pool, short timeouts and no automatic re-sending of commands.

        Nothing here talks to Redis: connections are made on first use, so an instance built while
        Redis is down works once Redis is back.
        """

    @abstractmethod
    def describe(self) -> str:
        """Where the settings point, for messages: never the password."""

    def hot_path(self, client: Client, charge_script: str) -> HotPath | None:
        """The charge's own transport for a store over ``client``; None (the default): charges go
        through the client, as every other command does."""
        return None


class Keyspace:
    """How the store's keys lie over what a client reaches, for the store's calls that depend on it.

    This one: on the one server that every command of the client goes to (a standalone server, over
    TLS or not, or the master Sentinel names; redis-py's own clients). The store marker is one key,
    scripts go through redis-py's ``Script`` and the clock is that server's. A topology that spreads
    keys over slots gives its client its own (``cluster.py``), which ``keyspace_of`` finds.
    """

    # Whether the script that changes an account's plan can move the account between the plans' index
    # sets (``Keys.plan_accounts``): yes when every key is on one server.
    plan_index_in_scripts = True

    def marker(self, keys: Keys, account: str) -> str:
        """The store marker that a charge of ``account`` reads."""
        return keys.store

    # Whether the scripts count into the day's totals over every account directly (store/totals.py).
    totals_in_scripts = True

    def totals_prefix(self, keys: Keys, account: str) -> str:
        """Where a script of ``account`` counts the day's totals (``<this>YYYYMMDD``): the totals."""
        return totals_prefix(keys.prefix)

    def mark_store(self, client: Client, keys: Keys) -> None:
        """Write the store marker (one command)."""
        cast(Any, client).execute_command("SET", keys.store, "1")

    def store_marked(self, client: Client, keys: Keys) -> bool:
        """Whether the store marker is there (one command)."""
        return bool(cast(Any, client).execute_command("EXISTS", keys.store))

    def run_script(self, client: Client, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA; on NOSCRIPT (the script did not run) it is loaded and sent once more."""
        try:
            return script(keys=keys, args=args)  # redis-py's Script: EVALSHA, SCRIPT LOAD, EVALSHA
        except redis.exceptions.NoScriptError:
            # Flushed again between the load and the second EVALSHA: EVAL cannot meet NOSCRIPT.
            return client.eval(script.script, len(keys), *keys, *args)

    def ask_time(self, client: Client, key: str) -> tuple[float, Any, float]:
        """TIME, asked of the node that holds ``key``, between the local clock (milliseconds) just
        before it was sent and just after its reply."""
        sent = time.time() * 1000
        return sent, cast(Any, client).execute_command("TIME"), time.time() * 1000


ONE_SERVER = Keyspace()


def keyspace_of(client: Client) -> Keyspace:
    """The keyspace of a client: its own if it has one (a Cluster's), else one server's."""
    keyspace: Keyspace = getattr(client, "keyspace", ONE_SERVER)
    return keyspace


def common_options(settings: RedisSettings) -> dict[str, Any]:
    """Options every data connection shares, whatever the topology."""
    return {
        "username": settings.username,
        "password": settings.password,
        "socket_connect_timeout": settings.connect_timeout / 1000,
        "socket_timeout": settings.read_timeout / 1000,
        "health_check_interval": 0,
        "driver_info": None,  # no CLIENT SETINFO round trips on each new connection
        # redis-py 8 caps a pool at 100 connections and raises past it. Each request in flight in the
        # plugin server holds one connection for its charge, and Kong may send far more than 100
        # at once (threads or greenlets): a cap that low would turn a burst into 503s.
        "max_connections": MAX_CONNECTIONS,
    }


def tls_options(settings: RedisSettings) -> dict[str, Any]:
    """The certificate check, when ``ssl`` is on (nothing otherwise)."""
    if not settings.ssl:
        return {}
    return {
        "ssl_cert_reqs": "required" if settings.ssl_verify else "none",
        "ssl_check_hostname": settings.ssl_verify,
        "ssl_ca_certs": settings.ca_file,
    }


def no_retry() -> Retry:
    # redis-py retries timeouts and connection errors by re-sending the command (10 times by
    # default in redis-py 8): a charge whose reply was lost would be applied again.
    return Retry(NoBackoff(), 0)


def scheme(settings: RedisSettings) -> str:
    return "rediss" if settings.ssl else "redis"


def user(settings: RedisSettings) -> str:
    """``name@`` for an ACL user, for descriptions."""
    return f"{settings.username}@" if settings.username else ""


def server_url(settings: RedisSettings) -> str:
    """One server's address as a URL, without the password."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{scheme(settings)}://{user(settings)}{host}:{settings.port}/{settings.database}"


class NamedSSLConnection(SSLConnection):
    """TLS to the configured address, with SNI and the certificate check against ``server_name``.

    redis-py sends SNI and checks the certificate against the address it connects to
    (``SSLConnection._wrap_socket_with_ssl`` passes ``server_hostname=self.host``); Kong's
    ``server_name`` names the certificate while ``host`` (or the master a sentinel reports, an
    address) says where to connect.
    """

    def __init__(self, *, ssl_server_name: str, **kwargs: Any) -> None:
        self.ssl_server_name = ssl_server_name
        super().__init__(**kwargs)

    def _wrap_socket_with_ssl(self, sock: Any) -> Any:
        address = self.host
        self.host = self.ssl_server_name
        try:
            return cast(Any, super())._wrap_socket_with_ssl(sock)
        finally:
            self.host = address
