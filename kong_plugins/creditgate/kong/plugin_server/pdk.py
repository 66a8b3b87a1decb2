"""The ``kong`` object a phase receives: ``kong.request.get_header("x")`` becomes one call to Kong.

The same surface as kong-pdk's ``kong_pdk.pdk.Kong`` (``FakeClasses``): any attribute path is a method
name, and calling it sends ``{Method, Args}`` to Kong (what it returns is ``loop.Worker.call``'s);
``kong.log.*`` arguments that MessagePack cannot carry are sent as their ``str``. kong-pdk builds a
new object for every attribute of every call; here each node keeps its children, so a path is built
once per worker.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

Caller = Callable[..., Any]  # call(method, *args)
_LOG_TYPES = (str, int, list, dict)


class Node(partial[Any]):
    """One attribute path of the PDK: ``call`` with the path's method name first, a ``partial``, so that
    calling it costs no Python frame of its own. A child, made on first use, is kept as an attribute:
    later uses of ``kong.request`` are a plain attribute read. (``partial``'s own ``func``, ``args`` and
    ``keywords`` are no PDK names.)"""

    def __getattr__(self, name: str) -> Node:
        if name.startswith("__"):
            raise AttributeError(name)
        method = f"{self.args[0]}.{name}"
        logs = method == "kong.log" or method.startswith("kong.log.")
        child = (_LogNode if logs else Node)(self.func, method)
        setattr(self, name, child)
        return child

    def __str__(self) -> str:  # kong-pdk's FakeClasses asks Kong for it
        return str(self())


class _LogNode(Node):
    """``kong.log`` and below: arguments are made sendable first."""

    def __call__(self, /, *args: Any, **_keywords: Any) -> Any:
        return self.func(self.args[0], *(a if type(a) in _LOG_TYPES else str(a) for a in args))


def kong_object(call: Caller) -> Node:
    """The ``kong`` a phase is called with; ``call(method, *args)`` sends a call to Kong and returns
    what the phase sees (``loop.Worker.call``)."""
    return Node(call, "kong")
