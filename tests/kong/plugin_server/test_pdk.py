"""The ``kong`` object: the same calls as kong-pdk's, made once per attribute path."""

from __future__ import annotations

from queue import Queue
from typing import Any

import pytest
from kong_pdk.pdk import Kong

from creditgate.kong.plugin_server.pdk import kong_object


def plugin_calls(kong: Any) -> list[Any]:
    return [
        kong.client.get_consumer(),
        kong.request.get_header("Idempotency-Key"),
        kong.service.request.set_headers({"X-A": "1"}),
        kong.log.warn("text", 3, 2.5, None),
        kong.response.exit(402, b"{}", {"Content-Type": "application/problem+json"}),
    ]


def test_the_same_calls_as_kong_pdk_s_object() -> None:
    sent: list[Any] = []

    def call(method: str, *args: Any) -> Any:
        sent.append({"Method": method, "Args": list(args)})
        return None if method == "kong.response.exit" else f"answer of {method}"

    ours = plugin_calls(kong_object(call))

    class Channel:  # kong-pdk's channel: what the phase puts, and Kong's answers
        def __init__(self) -> None:
            self.put_items: list[Any] = []
            self.answers: Queue[Any] = Queue()

        def put(self, item: Any) -> None:
            self.put_items.append({"Method": item["Method"], "Args": list(item["Args"])})
            if item["Method"] != "kong.response.exit":
                self.answers.put((f"answer of {item['Method']}", None))

        def get(self) -> Any:
            return self.answers.get_nowait()

    channel = Channel()
    theirs = plugin_calls(Kong(channel, lua_style=False).kong)
    assert ours == theirs
    assert sent == channel.put_items
    assert sent[3]["Args"] == ["text", 3, "2.5", "None"]  # kong.log: kong-pdk sends str of the rest


def test_a_path_is_built_once() -> None:
    kong = kong_object(lambda method, *args: None)
    assert kong.request.get_header is kong.request.get_header
    with pytest.raises(AttributeError):
        kong.__wrapped__  # noqa: B018  # dunder lookups are Python's, not the PDK's
