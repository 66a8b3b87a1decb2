"""credit-gate's own plugin-server runtime (the default): Kong's MessagePack plugin protocol, answered as
kong-pdk 0.36 answers it, on gevent's event loop without kong-pdk's server (``loop.py``).

The plugin stays a kong-pdk plugin: the same class, the same ``kong`` surface (``pdk.py``), kong-pdk's
command line and ``--dump``. ``--runtime kong-pdk`` runs kong-pdk's own server instead
(``creditgate.kong.runtime``).
"""

from __future__ import annotations

import gc
import socket
from typing import Any

from creditgate.kong.plugin_server.loop import Server, log
from creditgate.kong.plugin_server.protocol import PluginInfo


def serve(
    name: str,
    plugin: type,
    version: str | None,
    priority: int,
    schema: list[Any],
    *,
    listener: socket.socket | None = None,
    channel_fd: int | None = None,
    lua_style: bool = False,
) -> None:
    """Serve Kong on ``listener`` (a single server) or on the acceptor's channel (``processes.py``).

    gevent must have patched the standard library first (``runtime.patch_for_gevent``), so that what
    the plugin does blocks only its own request.
    """
    server = Server(PluginInfo.of(name, plugin, version, priority, schema), lua=lua_style)
    # What start-up built (the modules, the plugin, the schema: most of the heap) lives as long as the
    # process: out of the collector's reach, a full collection scans only what requests left behind
    # (it scanned the whole heap, some 1,700,000 instructions, every few hundred requests).
    gc.freeze()
    if channel_fd is not None:
        server.serve_channel(channel_fd)
    elif listener is not None:
        log(f"serving {name} {version or ''} on {listener.getsockname()}")
        server.serve_listener(listener)
    else:
        raise ValueError("serve needs a listener or a channel")
