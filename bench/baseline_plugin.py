"""The baselines: plugin servers whose access phase makes the PDK calls of credit-gate's allowed path.

``kong.client.get_consumer()``, then ``kong.service.request.set_headers`` with three headers and
``kong.response.set_headers`` with four, as ``creditgate.kong.gate.Gate`` does for a paid request, and
nothing else: no Redis, no logic. What credit-gate costs above this is the gate itself.

With ``--round-trip`` the server adds, between those calls, the one Redis round trip the gate
makes: charge.lua's EVALSHA with the gate's keys and arguments, through the gate's own connection
(``creditgate.store.hot_path``), its reply read and thrown away. What that costs above the baseline
is the round trip alone; what the gate costs above it is the gate's own logic. Its config names the
Redis (``redis_port``, or ``redis_socket`` for the unix socket) and its ``redis_read_timeout``
(milliseconds, the gate's as the benchmark configures it).

Run as a script with kong-pdk's flags (``--kong-prefix``, ``--socket-name``, ``-g``, ``-m``) and
``--runtime``, as ``credit-gate-pluginserver``:

- ``--runtime kong-pdk``: kong-pdk's dedicated server, with ``--no-lua-style`` as
  ``credit-gate-pluginserver`` adds it, on the same kong-pdk fix (16 KiB read buffers for Kong's
  connections, see ``creditgate.kong.runtime``), so that what differs between the servers is what
  each adds;
- ``--runtime credit-gate`` (the default, as the gate server's): credit-gate's own runtime
  (``creditgate.kong.plugin_server``) on a socket bound here at ``--kong-prefix`` /
  ``--socket-name``; kong-pdk's mode flags mean nothing to it.

``--dump`` is kong-pdk's on either runtime.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

version = "0.1.0"
priority = 1
Schema: list[dict[str, Any]] = []
ROUND_TRIP_FLAG = "--round-trip"
ROUND_TRIP_SCHEMA: list[dict[str, Any]] = [
    {"redis_port": {"type": "integer", "default": 6379, "required": True}},
    {"redis_socket": {"type": "string"}},
    {"redis_read_timeout": {"type": "integer", "default": 2_000, "required": True}},
]
ROUTE = "bench-route"


class Plugin:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def access(self, kong: Any) -> None:
        consumer = kong.client.get_consumer()
        account = consumer["id"] if consumer else ""
        self.set_headers(kong, account)

    @staticmethod
    def set_headers(kong: Any, account: str) -> None:
        kong.service.request.set_headers(
            {
                "X-Credit-Account": account,
                "X-Credit-Plan": "bench-paid",
                "X-Credit-Charge-Id": "1767225600000-0",
            }
        )
        kong.response.set_headers(
            {
                "X-Credit-Cost": "1",
                "X-Credit-Balance": "999999999999",
                "X-Credit-Allowance-Remaining": "0",
                "X-Credit-Period-End": "2026-02-01T00:00:00Z",
            }
        )


class RoundTripPlugin(Plugin):
    """The baseline plus the charge's Redis round trip, and no logic around it."""

    def __init__(self, config: dict[str, Any]) -> None:
        from creditgate.core.config import RedisSettings
        from creditgate.store.keys import TOKEN_SECONDS, day_name, totals_prefix
        from creditgate.store.replies import USAGE_TTL_SECONDS
        from creditgate.store.store import RedisStore

        super().__init__(config)
        settings = RedisSettings(
            host="127.0.0.1",
            port=int(config["redis_port"]),
            socket_path=config.get("redis_socket") or None,
            read_timeout=int(config["redis_read_timeout"]),
        )
        self.store = RedisStore.from_settings(settings)
        assert self.store.hot_path is not None, "a standalone Redis without TLS has the gate's hot path"
        self.hot_path = self.store.hot_path
        self.usage_ttl = USAGE_TTL_SECONDS
        self.token_seconds = TOKEN_SECONDS
        self.totals_prefix, self.day_name = totals_prefix(self.store.keys.prefix), day_name

    def access(self, kong: Any) -> None:
        consumer = kong.client.get_consumer()
        account = consumer["id"] if consumer else ""
        now = int(time.time())
        keys = self.store.keys.account(account)

        def sent() -> tuple[list[str], list[Any]]:
            return [
                keys.state,
                keys.ledger,
                keys.usage(now),
                keys.members,
                keys.members,
                keys.holds,
                keys.holds_index,
                self.store.keys.store,
                keys.members,
                self.totals_prefix + self.day_name(now),  # the day's totals (store/totals.py)
            ], [
                *("", 1, "", ROUTE, 10_000, self.usage_ttl, "charge", 0, "", 0, 0),
                self.token_seconds,
                account,
                *varying,
            ]

        # charge.lua's KEYS and ARGV as RedisStore.charge sends them for a cost-1 request (no deadline),
        # packed as it packs them (what repeats, once per account and day); tests/deploy/test_bench.py
        # checks that Redis runs the same commands for this row as for the gate's.
        varying = (0, os.urandom(8).hex(), "")  # the deadline, the token, no request id
        self.hot_path.evalsha_kept((account, now // 86_400), varying, sent)
        self.set_headers(kong, account)


def serve_on_own_runtime(plugin: type[Plugin], schema: list[dict[str, Any]]) -> None:
    """credit-gate's runtime, as ``credit-gate-pluginserver`` runs it: gevent patched first, then a
    socket of its own at ``--kong-prefix`` / ``--socket-name``, then ``plugin_server.serve``."""
    from creditgate.kong import runtime as pdk_runtime

    pdk_runtime.patch_for_gevent()
    from creditgate.kong import plugin_server
    from creditgate.kong.processes import bind_listener, socket_path

    listener = bind_listener(socket_path(sys.argv[1:]))
    plugin_server.serve("baseline", plugin, version, priority, schema, listener=listener, lua_style=False)


def main() -> None:
    from creditgate.kong import runtime as pdk_runtime
    from creditgate.kong.processes import ONE_SHOT_FLAGS, RUNTIMES, split_flags

    flags = split_flags(sys.argv[1:], default=lambda: 1)  # --runtime, the gate server's default
    sys.argv[1:] = flags.rest
    plugin: type[Plugin] = Plugin
    schema = Schema
    if ROUND_TRIP_FLAG in sys.argv:
        sys.argv.remove(ROUND_TRIP_FLAG)
        plugin, schema = RoundTripPlugin, ROUND_TRIP_SCHEMA
    if flags.runtime == RUNTIMES[0] and not ONE_SHOT_FLAGS & set(sys.argv[1:]):
        serve_on_own_runtime(plugin, schema)
        return
    if plugin is RoundTripPlugin and pdk_runtime.wants_gevent(sys.argv[1:]):
        pdk_runtime.patch_for_gevent()  # as credit-gate-pluginserver does: the connection yields
    from kong_pdk.cli import start_dedicated_server

    pdk_runtime.install_small_read_buffers()
    if "--no-lua-style" not in sys.argv:
        sys.argv.append("--no-lua-style")
    start_dedicated_server("baseline", plugin, version, priority, schema)


if __name__ == "__main__":
    main()
