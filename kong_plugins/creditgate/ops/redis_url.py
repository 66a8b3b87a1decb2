"""A Redis URL as the plugin's ``RedisSettings``: ``redis://`` or ``rediss://`` (TLS), with
``user:password@``, or ``unix:///path/to/redis.sock?db=N`` for Redis's unix socket.

The CLI and the plugin build their clients through the same ``RedisStore.from_settings`` (the
topology's class, in ``store/topology/``), so a URL is only ever a way of writing the plugin's
``redis`` record: same fields, same TLS options.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from creditgate.core.fields import between
from creditgate.core.redis_settings import (
    LOCALHOST,
    PORTS,
    REDIS_FIELDS,
    REDIS_PORT,
    TIMEOUTS_MS,
    RedisSettings,
    parse_redis,
)
from creditgate.errors import ConfigError
from creditgate.store.topology import topology_for


def parse_node(text: str, what: str) -> dict[str, Any]:
    """``HOST:PORT`` (``[v6]:PORT``) as a node of the ``redis`` record."""
    host, _, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not host or not _digits(port) or not PORTS[0] <= int(port) <= PORTS[1]:
        raise ConfigError(f"{what} must be HOST:PORT, got {text!r}")
    return {"host": host, "port": int(port)}


def _digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes other scripts' digits ("٣"), which int() reads."""
    return text.isascii() and text.isdigit()


def settings_from_url(
    url: str,
    *,
    ssl: bool | None = None,
    ssl_verify: bool = True,
    server_name: str | None = None,
    ca_file: str | None = None,
    timeout_ms: int = 2000,
    sentinel_master: str | None = None,
    sentinels: Sequence[str] = (),
    sentinel_username: str | None = None,
    sentinel_password: str | None = None,
    cluster_nodes: Sequence[str] = (),
    password: str | None = None,
) -> RedisSettings:
    """Settings from a URL; ``ssl`` None means "as the scheme says" (``rediss://`` is TLS).

    With Sentinel (``sentinel_master`` and ``sentinels``) the URL gives the credentials, database and
    TLS of the master, and its host is not used; with Cluster (``cluster_nodes``) the same, the nodes
    being the seeds. The result goes through the plugin's own ``parse_redis``, so the CLI obeys the
    same rules as the plugin's ``redis`` record.
    """
    if _userinfo(url) is not None and "@" not in _authority(url):
        # "/", "?" or "#" in the user or password ends the URL's host part early: parsed as it is, the
        # password would be taken for a host, a port or a path, and shown in the error.
        raise ConfigError(
            f"Redis URL {redacted(url)!r} is not valid: a user or password containing '/', '?' or '#' "
            "must be percent-encoded (%2F, %3F, %23), or the password given with --redis-password-file"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        # The parser's message may quote a piece of the password: say it only when there is none.
        why = f": {error}" if _userinfo(url) is None else " (check the host and the port)"
        raise ConfigError(f"Redis URL {redacted(url)!r} is not valid{why}") from None
    if password is not None and parts.password is not None:
        raise ConfigError("the Redis password is given twice: in the URL and with --redis-password-file")
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            "Redis URL must start with redis://, rediss:// (TLS) or unix:// (a socket path), "
            f"got {redacted(url)!r}"
        )
    url_password = unquote(parts.password) if parts.password is not None else None
    socket_path = None
    if parts.scheme == "unix":
        socket_path, path = parts.path, _unix_database(parts.query)
        if parts.hostname:
            raise ConfigError(
                "a unix:// Redis URL names a path, not a host: write unix:///path/to/redis.sock, "
                f"got {redacted(url)!r}"
            )
    elif parts.query or parts.fragment:
        raise ConfigError("Redis URL takes no query (use --ssl-verify, --server-name, --ca-file instead)")
    else:
        path = parts.path.strip("/")
    low, high = between("database", REDIS_FIELDS)
    if path and (not _digits(path) or not low <= int(path) <= high):
        raise ConfigError(f"the Redis URL's database must be a number from {low} to {high}, got {path!r}")
    if not TIMEOUTS_MS[0] <= timeout_ms <= TIMEOUTS_MS[1]:
        raise ConfigError(
            f"the Redis timeout must be from {TIMEOUTS_MS[0] / 1000:g} to {TIMEOUTS_MS[1] / 1000:g} seconds, "
            f"got {timeout_ms / 1000}"
        )
    record: dict[str, Any] = {
        "host": parts.hostname or LOCALHOST,
        "port": REDIS_PORT if port is None else port,  # a port 0 is refused by parse_redis, not replaced
        "socket_path": socket_path,
        "username": unquote(parts.username) if parts.username else None,
        "password": password if password is not None else url_password,
        "database": int(path) if path else 0,
        "connect_timeout": timeout_ms,
        "read_timeout": timeout_ms,
        "ssl": parts.scheme == "rediss" if ssl is None else ssl,
        "ssl_verify": ssl_verify,
        "server_name": server_name,
        "ca_file": ca_file,
        "sentinel_master": sentinel_master,
        "sentinel_nodes": [parse_node(n, "--sentinel") for n in sentinels],
        "sentinel_username": sentinel_username,
        "sentinel_password": sentinel_password,
        "cluster_nodes": [
            {"ip": node["host"], "port": node["port"]}
            for node in (parse_node(n, "--cluster-node") for n in cluster_nodes)
        ],
    }
    return parse_redis(record)


def _unix_database(query: str) -> str:
    """The database of a ``unix://`` URL: ``?db=N``, or none."""
    if not query:
        return ""
    fields = parse_qs(query, keep_blank_values=True)
    if list(fields) != ["db"] or len(fields["db"]) != 1:
        raise ConfigError(f"a unix:// Redis URL takes only ?db=N as its query, got ?{query}")
    return fields["db"][0]


def describe(settings: RedisSettings) -> str:
    """Where the settings point, for messages: never the password (each topology says it its way)."""
    return topology_for(settings).describe()


def _userinfo(url: str) -> str | None:
    """What stands between ``scheme://`` and the last ``@``: the credentials, however they are written."""
    _, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return None
    return rest.rpartition("@")[0]


def _authority(url: str) -> str:
    """The host part as a URL parser reads it: up to the first ``/``, ``?`` or ``#``."""
    rest = url.partition("://")[2]
    for end in "/?#":
        rest = rest.split(end, 1)[0]
    return rest


def redacted(url: str) -> str:
    """The URL with its credentials replaced, safe to print, whatever characters the password holds.

    Everything up to the last ``@`` is credentials: a password with ``/``, ``#``, ``?`` or ``@`` that
    a URL parser would split elsewhere is still hidden whole. The user name is hidden with it.
    """
    userinfo = _userinfo(url)
    if userinfo is None:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
