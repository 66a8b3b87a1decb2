#!/usr/bin/env python3
"""A tiny dedicated-server plugin, used only to self-test the harness, ``tests/harness/``.

access: reads the consumer and one header; refuses anonymous or denied requests with 403, otherwise tags
the upstream request and remembers the consumer in ``kong.ctx.shared``.
log: reports the response status and the remembered consumer through ``kong.log``.
A few config switches make it misbehave on purpose, so that the harness's error paths can be tested.
"""

from __future__ import annotations

import time
from typing import Any

import kong_pdk.cli

Schema = (
    {"header_name": {"type": "string", "default": "x-plan"}},
    {"deny_value": {"type": "string", "default": "blocked"}},
    {"message": {"type": "string"}},
    {
        "limits": {
            "type": "record",
            "fields": [
                {"burst": {"type": "integer", "default": 5}},
                {"window": {"type": "integer"}},
            ],
        }
    },
    {"stall_seconds": {"type": "number", "default": 0}},
    {"call_unknown_method": {"type": "boolean", "default": False}},
    {"forbidden_call_in_log": {"type": "boolean", "default": False}},
)

version = "0.1.0"
priority = 10


class Plugin:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def access(self, kong: Any) -> None:
        consumer, _ = kong.client.get_consumer()  # first PDK call before anything that could fail
        value, _ = kong.request.get_header(self.config["header_name"])
        if consumer is None or value == self.config["deny_value"]:
            message = self.config["message"] or "denied"
            kong.response.exit(403, {"message": message}, {"X-Sample-Reason": "denied"})
            return  # kong-pdk never answers exit: return right away
        if self.config["stall_seconds"]:
            time.sleep(self.config["stall_seconds"])
        kong.service.request.set_header("X-Consumer-Username", consumer["username"])
        kong.ctx.shared.set("sample.consumer_id", consumer["id"])
        if self.config["call_unknown_method"]:
            kong.no_such_module.no_such_method()

    def log(self, kong: Any) -> None:
        status, _ = kong.response.get_status()
        consumer_id, _ = kong.ctx.shared.get("sample.consumer_id")
        kong.log.notice("status=", status, " consumer=", consumer_id or "-")
        if self.config["forbidden_call_in_log"]:
            kong.request.get_path()


if __name__ == "__main__":
    kong_pdk.cli.start_dedicated_server("harness-sample", Plugin, version, priority, Schema)
