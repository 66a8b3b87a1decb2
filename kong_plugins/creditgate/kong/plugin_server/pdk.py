"""The ``kong`` object a phase receives: ``kong.request.get_header("x")`` becomes one call to Kong.

The same surface as kong-pdk's ``kong_pdk.pdk.Kong`` (``FakeClasses``): any attribute path is a method
name, calling it sends ``{Method, Args}`` and returns Kong's answer (Python style: the value, or
``PDKException`` on an error; Lua style: ``(value, error)``); ``kong.response.exit`` and
``kong.response.error`` return nothing, as Kong answers them with no Step; ``kong.log.*`` arguments
that MessagePack cannot carry are sent as their ``str``. kong-pdk builds a new object for every
attribute of every call; here each node keeps its children, so a path is built once per worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kong_pdk.exception import PDKException

from creditgate.kong.plugin_server.protocol import TERMINAL_METHODS

# call(method, args) -> (data, error), or None for a terminal method
Caller = Callable[[str, tuple[Any, ...]], Any]
_LOG_TYPES = (str, int, list, dict)


class Node:
    """One attribute path of the PDK. A child, made on first use, is kept as an attribute: later uses
    of ``kong.request`` are a plain attribute read."""

    def __init__(self, method: str, call: Caller) -> None:
        self._method = method
        self._call = call

    def __getattr__(self, name: str) -> Node:
        if name.startswith("__"):
            raise AttributeError(name)
        child = _node(f"{self._method}.{name}", self._call)
        setattr(self, name, child)
        return child

    def __call__(self, *args: Any) -> Any:
        return self._call(self._method, args)

    def __str__(self) -> str:  # kong-pdk's FakeClasses asks Kong for it
        return str(self._call(self._method, ()))


class _LogNode(Node):
    """``kong.log`` and below: arguments are made sendable first."""

    def __call__(self, *args: Any) -> Any:
        return self._call(self._method, tuple(a if type(a) in _LOG_TYPES else str(a) for a in args))


def _node(method: str, call: Caller) -> Node:
    if method == "kong.log" or method.startswith("kong.log."):
        return _LogNode(method, call)
    return Node(method, call)


def python_style(exchange: Callable[[str, tuple[Any, ...]], Any]) -> Caller:
    """Return the value; raise ``PDKException`` on Kong's error (kong-pdk's ``--no-lua-style``)."""

    def call(method: str, args: tuple[Any, ...]) -> Any:
        answer = exchange(method, args)
        if method in TERMINAL_METHODS:
            return None
        data, error = answer
        if error:
            raise PDKException(f"exception from {method}: {error}")
        return data

    return call


def lua_style(exchange: Callable[[str, tuple[Any, ...]], Any]) -> Caller:
    """Return ``(value, error)`` (kong-pdk's default)."""

    def call(method: str, args: tuple[Any, ...]) -> Any:
        answer = exchange(method, args)
        if method in TERMINAL_METHODS:
            return None
        return answer

    return call


def kong_object(exchange: Callable[[str, tuple[Any, ...]], Any], lua: bool) -> Node:
    """The ``kong`` a phase is called with; ``exchange`` sends a call and waits for Kong's answer."""
    return Node("kong", (lua_style if lua else python_style)(exchange))
