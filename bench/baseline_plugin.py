"""The baseline: a plugin server whose access phase makes the PDK calls of credit-gate's allowed path.

``kong.client.get_consumer()``, then ``kong.service.request.set_headers`` with three headers and
``kong.response.set_headers`` with four, as ``creditgate.handler.Gate`` does for a paid request, and
nothing else: no Redis, no logic. What credit-gate costs above this is the gate itself.

Run as a script with kong-pdk's flags (``--kong-prefix``, ``--socket-name``, ``-g``, ``-m``); it adds
``--no-lua-style`` as ``credit-gate-pluginserver`` does. It imports kong-pdk, and runs on the same
kong-pdk fix as ``credit-gate-pluginserver`` (16 KiB read buffers for Kong's connections, see
``creditgate.pdk_runtime``), so that what differs between the two servers is the gate.
"""

from __future__ import annotations

import sys
from typing import Any

version = "0.1.0"
priority = 1
Schema: list[dict[str, Any]] = []


class Plugin:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def access(self, kong: Any) -> None:
        consumer = kong.client.get_consumer()
        account = consumer["id"] if consumer else ""
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


def main() -> None:
    from kong_pdk.cli import start_dedicated_server

    from creditgate.pdk_runtime import install_small_read_buffers

    install_small_read_buffers()
    if "--no-lua-style" not in sys.argv:
        sys.argv.append("--no-lua-style")
    start_dedicated_server("baseline", Plugin, version, priority, Schema)


if __name__ == "__main__":
    main()
