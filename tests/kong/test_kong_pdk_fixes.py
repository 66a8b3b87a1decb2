"""kong-pdk's listener with ``install_lean_dispatch``: the same bytes and log lines as kong-pdk's own.

Each test runs kong-pdk 0.36's ``Server.handle`` and credit-gate's ``rpc_handler`` over a socketpair
against a real kong-pdk ``PluginServer`` (threads mode) serving a tiny plugin, and compares what each
wrote. Clocks and instance numbering are pinned so that the two runs can be compared byte for byte.
"""

from __future__ import annotations

import re
import socket
import types
from collections.abc import Callable, Iterator
from typing import Any
from unittest.mock import ANY

import gevent
import kong_pdk.listener
import kong_pdk.module
import kong_pdk.server
import msgpack
import pytest
from kong_pdk.exception import PDKException
from kong_pdk.logger import Logger
from kong_pdk.module import Module

from creditgate.kong import runtime

KONG_PDK_HANDLE = kong_pdk.listener.Server.handle
DEFAULT_LEVEL = Logger.WARNING - 1  # kong-pdk's cli: no -v
DEBUG_LEVEL = Logger.WARNING - 3  # -vv
INSTANCE = 7
EVENT = 100


class CountedStr(dict[str, int]):
    """A value that msgpack packs as a map and that counts how often it is made into text."""

    made_text = 0

    def __str__(self) -> str:
        CountedStr.made_text += 1
        return super().__str__()


class TinyPlugin:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def access(self, kong: Any) -> None:
        header = kong.request.get_header("x-in")
        try:
            kong.service.request.set_header("x-seen", header)
        except PDKException as error:
            kong.log.err(str(error))


ODD = object()  # one object: its address is in the debug line, the same in both runs


class TinyServer(kong_pdk.server.PluginServer):  # type: ignore[misc]  # kong-pdk is untyped
    """kong-pdk's PluginServer plus two methods: a value msgpack refuses, and one counted as text."""

    def odd_value(self) -> object:
        return ODD

    def counted(self) -> CountedStr:
        return CountedStr(a=1)


def plugin_server(level: int) -> TinyServer:
    server = TinyServer(loglevel=level, use_gevent=False, lua_style=False)
    server.instance_id, server.event_id = INSTANCE, EVENT
    plugin = types.SimpleNamespace(Plugin=TinyPlugin, Schema=[], version="1.0", priority=5)
    server.plugins["tiny"] = Module("tiny", module=plugin)
    return server


@pytest.fixture(autouse=True)
def pinned_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = types.SimpleNamespace(time=lambda: 1_700_000_000.25)
    monkeypatch.setattr(kong_pdk.server, "time", clock)
    monkeypatch.setattr(kong_pdk.module, "time", clock)


def message(msgid: int, method: Any, *args: Any) -> list[Any]:
    return [0, msgid, method, list(args)]


CONVERSATION = [
    message(1, "plugin.GetStatus"),
    message(2, "plugin.GetPluginInfo", "tiny"),
    message(3, "plugin.GetPluginInfo", "missing"),  # PluginServerException: warned, answered
    message(4, "plugin.StartInstance", {"Name": "tiny", "Config": '{"cost": 3}'}),
    message(5, "plugin.HandleEvent", {"InstanceId": INSTANCE, "EventName": "access"}),
    message(6, "plugin.Step", {"EventId": EVENT, "Data": "hello"}),
    message(7, "plugin.StepError", {"EventId": EVENT, "Data": "no header for you"}),
    message(8, "plugin.Step", {"EventId": EVENT}),
    message(9, "plugin.HandleEvent", {"InstanceId": 12345, "EventName": "access"}),
    message(10, "plugin.FooBar"),  # no such handler: AttributeError, logged with its traceback
    message(11, "kong.Log", "x"),  # another namespace
    message(12, "plugin.GetPluginInfo"),  # wrong arguments: TypeError
    message(13, "plugin.OddValue"),  # msgpack cannot pack the value: the next answer is still whole
    message(14, "plugin.Counted"),
    message(15, "plugin.getPluginInfo", "tiny"),  # kong-pdk lowers the first letter itself
    message(16, "plugin.GetPluginInfo", "tiny"),  # a method name seen before
    message(17, "plugin.CloseInstance", INSTANCE),
    message(18, "plugin.CloseInstance", INSTANCE),
    message(19, "plugin.GetPluginInfo", "tiny", "extra"),
]


def converse(
    handle: Callable[..., None], level: int, messages: list[list[Any]]
) -> tuple[bytes, BaseException | None]:
    """Send ``messages``, run ``handle`` until the peer stops writing; what it answered, what it raised."""
    server = kong_pdk.listener.Server(plugin_server(level))
    ours, kongs = socket.socketpair()
    with ours, kongs:
        kongs.sendall(b"".join(msgpack.packb(each) for each in messages))
        kongs.shutdown(socket.SHUT_WR)
        raised = None
        try:
            handle(server, ours, None)
        except Exception as error:  # compared with what kong-pdk's raises
            raised = error
        ours.shutdown(socket.SHUT_WR)
        answers = b""
        while chunk := kongs.recv(65536):
            answers += chunk
    return answers, raised


def log_lines(text: str) -> list[str]:
    """Log lines without their clock time or traceback frames (whose file and line differ)."""
    return [re.sub(r"\[\d\d:\d\d:\d\d\]", "[time]", line) for line in text.splitlines() if line[:1] != " "]


def both(
    capsys: pytest.CaptureFixture[str], level: int, messages: list[list[Any]]
) -> Iterator[tuple[bytes, BaseException | None, list[str]]]:
    for handle in (KONG_PDK_HANDLE, runtime.rpc_handler()):
        answers, raised = converse(handle, level, messages)
        yield answers, raised, log_lines(capsys.readouterr().out)


@pytest.mark.parametrize("level", [DEFAULT_LEVEL, DEBUG_LEVEL], ids=["default", "debug"])
def test_answers_and_logs_a_conversation_exactly_as_kong_pdk_does(
    capsys: pytest.CaptureFixture[str], level: int
) -> None:
    (theirs, their_error, their_log), (ours, our_error, our_log) = both(capsys, level, CONVERSATION)
    assert their_error is None and our_error is None
    assert ours == theirs
    assert our_log == their_log
    unpacker = msgpack.Unpacker(strict_map_key=False)
    unpacker.feed(ours)
    answers = list(unpacker)
    assert [answer[1] for answer in answers] == [each[1] for each in CONVERSATION]
    errors = {answer[1]: answer[2] for answer in answers}
    assert errors[3] == "missing not initizlied" and errors[9] == "no plugin instance #12345"
    assert errors[10] == "'TinyServer' object has no attribute 'foo_bar'"
    assert errors[11] == "RPC for kong is not supported"
    assert errors[13] == "can not serialize 'object' object"
    assert answers[6][3] == {"Data": {"Method": "kong.log.err", "Args": [ANY]}, "EventId": EVENT}
    assert answers[7][3] == {"Data": "ret", "EventId": EVENT}
    assert [errors[n] for n in (14, 15, 16, 17)] == [None] * 4


@pytest.mark.parametrize(
    ("method", "raised"),
    [
        ("plugin", ValueError),  # no dot
        ("plugin.Get.Status", ValueError),  # two dots
        ("plugin.", IndexError),  # no command
        (5, AttributeError),  # not a string
        ([1, 2], AttributeError),  # not even hashable
        (b"plugin.GetStatus", TypeError),
    ],
)
def test_a_malformed_method_name_ends_the_connection_as_kong_pdk_s_does(
    capsys: pytest.CaptureFixture[str], method: Any, raised: type[Exception]
) -> None:
    messages = [
        message(1, "plugin.GetPluginInfo", "tiny"),
        message(2, method),
        message(3, "plugin.GetStatus"),
    ]
    (theirs, their_error, _), (ours, our_error, _) = both(capsys, DEFAULT_LEVEL, messages)
    assert type(our_error) is type(their_error) is raised
    assert str(our_error) == str(their_error)
    assert ours == theirs and ours.count(b"Priority") == 1  # the first answer only


def test_a_malformed_name_is_not_remembered_and_a_good_one_is_mapped_once() -> None:
    handle = runtime.rpc_handler()
    mapped: list[Any] = []
    original = runtime._dispatch_of

    def counting(method: Any) -> runtime.Dispatch:
        mapped.append(method)
        return original(method)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "_dispatch_of", counting)
        converse(handle, DEFAULT_LEVEL, [message(n, "plugin.GetStatus") for n in range(3)])
        converse(handle, DEFAULT_LEVEL, [message(9, "plugin.GetStatus"), message(10, "kong.Log")] * 2)
        converse(handle, DEFAULT_LEVEL, [message(11, "plugin")])
        converse(handle, DEFAULT_LEVEL, [message(12, "plugin")])
    assert mapped == ["plugin.GetStatus", "kong.Log", "plugin", "plugin"]


def test_the_debug_lines_are_not_formatted_at_the_default_level(capsys: pytest.CaptureFixture[str]) -> None:
    CountedStr.made_text = 0
    converse(KONG_PDK_HANDLE, DEFAULT_LEVEL, [message(1, "plugin.Counted")])
    assert CountedStr.made_text == 1, "kong-pdk's own handle formats it (else this test proves nothing)"
    CountedStr.made_text = 0
    answers, _ = converse(runtime.rpc_handler(), DEFAULT_LEVEL, [message(1, "plugin.Counted")])
    assert CountedStr.made_text == 0
    assert msgpack.unpackb(answers) == [1, 1, None, {"a": 1}]
    assert "rpc:" not in capsys.readouterr().out


def test_the_debug_lines_are_formatted_and_written_at_vv(capsys: pytest.CaptureFixture[str]) -> None:
    CountedStr.made_text = 0
    converse(runtime.rpc_handler(), DEBUG_LEVEL, [message(1, "plugin.Counted")])
    assert CountedStr.made_text == 1
    out = capsys.readouterr().out
    assert "rpc: #1 method: plugin.Counted args: []" in out
    assert "rpc: #1 return: {'a': 1}" in out


def test_the_listener_still_reads_through_small_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    read_sizes: list[int] = []
    unpacker = msgpack.Unpacker

    def recording(file_like: Any, **options: Any) -> Any:
        read_sizes.append(options.get("read_size", 0))
        return unpacker(file_like, **options)

    monkeypatch.setattr(kong_pdk.listener, "msgpack", kong_pdk.listener.msgpack)  # restored after
    runtime.install_small_read_buffers()
    monkeypatch.setattr(msgpack, "Unpacker", recording)
    answers, _ = converse(runtime.rpc_handler(), DEFAULT_LEVEL, [message(1, "plugin.GetStatus")])
    assert read_sizes == [runtime.READ_BUFFER_BYTES]
    assert msgpack.unpackb(answers)[1] == 1


def test_install_replaces_the_listener_s_handle_once_and_stops_tracking_greenlet_trees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kong_pdk.listener.Server, "handle", KONG_PDK_HANDLE)  # restored after
    monkeypatch.setattr(gevent.config, "track_greenlet_tree", True)
    runtime.install_lean_dispatch()
    installed = kong_pdk.listener.Server.handle
    runtime.install_lean_dispatch()
    assert kong_pdk.listener.Server.handle is installed is not KONG_PDK_HANDLE
    assert kong_pdk.listener.UnixStreamServer.handle is installed
    assert gevent.config.track_greenlet_tree is False
    greenlet = gevent.Greenlet(lambda: None)
    assert greenlet.spawning_greenlet is None and greenlet.spawning_stack is None
