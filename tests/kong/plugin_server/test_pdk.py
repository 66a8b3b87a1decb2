"""The ``kong`` object: the same calls as kong-pdk's, made once per attribute path."""

from __future__ import annotations

from queue import Queue
from typing import Any

import pytest
from kong_pdk.exception import PDKException
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

    def exchange(method: str, args: tuple[Any, ...]) -> Any:
        sent.append({"Method": method, "Args": args})
        return (f"answer of {method}", None)

    ours = plugin_calls(kong_object(exchange, lua=False))

    class Channel:  # kong-pdk's channel: what the phase puts, and Kong's answers
        def __init__(self) -> None:
            self.put_items: list[Any] = []
            self.answers: Queue[Any] = Queue()

        def put(self, item: Any) -> None:
            self.put_items.append(item)
            if item["Method"] != "kong.response.exit":
                self.answers.put((f"answer of {item['Method']}", None))

        def get(self) -> Any:
            return self.answers.get_nowait()

    channel = Channel()
    theirs = plugin_calls(Kong(channel, lua_style=False).kong)
    assert ours == theirs
    assert [{"Method": c["Method"], "Args": list(c["Args"])} for c in sent] == [
        {"Method": c["Method"], "Args": list(c["Args"])} for c in channel.put_items
    ]
    assert sent[3]["Args"] == ("text", 3, "2.5", "None")  # kong.log: kong-pdk sends str of the rest


def test_an_error_from_kong_raises_in_python_style_and_is_returned_in_lua_style() -> None:
    def exchange(method: str, args: tuple[Any, ...]) -> Any:
        return (None, "not found")

    with pytest.raises(PDKException, match=r"exception from kong\.client\.get_consumer: not found"):
        kong_object(exchange, lua=False).client.get_consumer()
    assert kong_object(exchange, lua=True).client.get_consumer() == (None, "not found")


def test_a_path_is_built_once() -> None:
    kong = kong_object(lambda method, args: (None, None), lua=False)
    assert kong.request.get_header is kong.request.get_header
    with pytest.raises(AttributeError):
        kong.__wrapped__  # noqa: B018  # dunder lookups are Python's, not the PDK's
