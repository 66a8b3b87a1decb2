"""A plugin whose phases do what a test's config says, served by either runtime.

``python tiny_server.py --runtime credit-gate|kong-pdk <kong-pdk flags>``; ``TINY_EVENT_BOUND`` (seconds)
and ``TINY_MAX_EVENTS`` shorten the credit-gate runtime's bounds, so that a test need not wait a minute.
kong-pdk's runtime runs unpatched (gevent), as kong-pdk ships it: the answers of the two are compared.
"""

from __future__ import annotations

import os
import sys
from typing import Any

version = "1.2.3"
priority = 7
Schema = [{"mode": {"type": "string", "default": "headers"}}]


class Plugin:
    def __init__(self, config: dict[str, Any]) -> None:
        if config.get("mode") == "refuse_config":
            raise ValueError("this config is refused")
        self.mode = config.get("mode") or "headers"

    def access(self, kong: Any) -> None:
        mode = self.mode
        if mode == "raise_first":
            raise RuntimeError("before any call")
        consumer = kong.client.get_consumer()
        if mode == "raise_after_call":
            raise RuntimeError("after a call")
        if mode == "exit":
            kong.response.exit(402, b'{"title":"pay"}', {"Content-Type": "application/problem+json"})
            return
        if mode == "call_after_exit":
            kong.response.exit(402)
            try:
                kong.log.err("after exit")
            except Exception as error:  # what the runtime says of a call after the event ended
                print(f"tiny: after exit: {type(error).__name__}", file=sys.stderr, flush=True)
            return
        if mode == "unpackable":
            try:
                kong.service.request.set_header("X-Set", {1, 2})
            except TypeError:
                kong.service.request.set_header("X-Unpackable", "refused")
            return
        if mode == "errors":  # Kong answers the next call with an error (StepError)
            try:
                answer = kong.request.get_header("X-Missing")
            except Exception as error:
                answer = f"{type(error).__name__}: {error}"
            kong.service.request.set_header("X-Answer", repr(answer))
            return
        if mode == "stall":
            import time

            time.sleep(3600)  # gevent's sleep once patched: blocks this event only
        name = consumer["username"] if consumer else "anonymous"
        kong.service.request.set_headers({"X-Consumer": name, "X-Mode": mode})
        kong.log.notice("served", 1, ["a"], {"k": "v"}, 2.5)

    def log(self, kong: Any) -> None:
        kong.log.info("log phase")


def main() -> None:
    argv = sys.argv[1:]
    runtime = argv[argv.index("--runtime") + 1] if "--runtime" in argv else "credit-gate"
    if "--runtime" in argv:
        del argv[argv.index("--runtime") : argv.index("--runtime") + 2]
    sys.argv[1:] = [*argv, "--no-lua-style"]
    from creditgate.kong import runtime as pdk_runtime

    pdk_runtime.patch_for_gevent()
    if runtime == "kong-pdk":
        from kong_pdk.cli import start_dedicated_server

        sys.argv.append("-g")
        start_dedicated_server("tiny", Plugin, version, priority, Schema)
        return
    from kong_pdk.cli import parse

    from creditgate.kong import plugin_server, processes
    from creditgate.kong.plugin_server import loop

    args = parse(dedicated=True)
    loop.EVENT_BOUND = float(os.environ.get("TINY_EVENT_BOUND", loop.EVENT_BOUND))
    loop.MAX_EVENTS = int(os.environ.get("TINY_MAX_EVENTS", loop.MAX_EVENTS))
    loop.SWEEP_SECONDS = min(loop.SWEEP_SECONDS, loop.EVENT_BOUND / 4)
    listener = processes.bind_listener(os.path.join(args.prefix, args.socket_name))
    lua_style = bool(os.environ.get("TINY_LUA_STYLE"))
    plugin_server.serve("tiny", Plugin, version, priority, Schema, listener=listener, lua_style=lua_style)


if __name__ == "__main__":
    main()
