"""A Redis URL (``redis://`` or ``rediss://``, with ``user:password@``) as the plugin's ``RedisSettings``.

The CLI and the plugin build their clients through the same ``connect(RedisSettings)``, so a URL is
only ever a way of writing the plugin's ``redis`` record: same fields, same TLS options.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from creditgate.core.config import RedisSettings
from creditgate.errors import ConfigError


def settings_from_url(
    url: str,
    *,
    ssl: bool | None = None,
    ssl_verify: bool = True,
    server_name: str | None = None,
    ca_file: str | None = None,
    timeout_ms: int = 2000,
) -> RedisSettings:
    """Settings from a URL; ``ssl`` None means "as the scheme says" (``rediss://`` is TLS)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"Redis URL {redacted(url)!r} is not valid: {error}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"Redis URL must start with redis:// or rediss:// (TLS), got {redacted(url)!r}")
    if parts.query or parts.fragment:
        raise ConfigError("Redis URL takes no query (use --ssl-verify, --server-name, --ca-file instead)")
    path = parts.path.strip("/")
    if path and (not path.isdigit() or not 0 <= int(path) <= 15):
        raise ConfigError(f"the Redis URL's database must be a number from 0 to 15, got {path!r}")
    if not 1 <= timeout_ms <= 60_000:
        raise ConfigError(f"the Redis timeout must be from 0.001 to 60 seconds, got {timeout_ms / 1000}")
    return RedisSettings(
        host=parts.hostname or "127.0.0.1",
        port=port or 6379,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        database=int(path) if path else 0,
        connect_timeout=timeout_ms,
        read_timeout=timeout_ms,
        ssl=parts.scheme == "rediss" if ssl is None else ssl,
        ssl_verify=ssl_verify,
        server_name=server_name,
        ca_file=ca_file,
    )


def describe(settings: RedisSettings) -> str:
    """Where the settings point, for messages: never the password."""
    scheme = "rediss" if settings.ssl else "redis"
    user = f"{settings.username}@" if settings.username else ""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{scheme}://{user}{host}:{settings.port}/{settings.database}"


def redacted(url: str) -> str:
    """The URL with its password replaced, safe to print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()
