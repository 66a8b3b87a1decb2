"""One request as Kong runs it around a plugin: ``ngx.ctx``, headers, the PDK functions and their phases.

The PDK calls a plugin server makes arrive here as ``call_pdk_method`` runs them in Kong
(``kong/runloop/plugin_servers/plugin.lua``'s ``exposed_api`` and ``kong/pdk/``): a Lua ``error()`` is
:class:`LuaError`, ``kong.response.exit``/``error`` end the event (:class:`EventEnded`).
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_plus


class LuaError(Exception):
    """A Lua ``error()`` inside a PDK function: aborts Kong's handler; the Python event is left hanging."""


class EventEnded(Exception):
    """``kong.response.exit``/``error``: Kong's coroutine yields and never sends another Step."""


def _norm(name: str) -> str:
    """nginx/Kong header lookups are case-insensitive and accept ``_`` for ``-``."""
    return name.lower().replace("_", "-")


HeaderInput = Mapping[str, Any] | Iterable[tuple[str, str]]


class Headers:
    """Ordered, case-insensitive multi-map of HTTP headers."""

    def __init__(self, items: HeaderInput | Headers | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        if isinstance(items, Headers):
            self._items = list(items._items)
        elif isinstance(items, Mapping):
            for name, value in items.items():
                self.add(name, value)
        elif items is not None:
            for name, value in items:
                self.add(name, value)

    def get(self, name: str) -> str | None:
        """First value, like ``ngx.req.get_headers()[name]`` reduced to one value."""
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        key = _norm(name)
        return [v for n, v in self._items if _norm(n) == key]

    def joined(self, name: str) -> str | None:
        """nginx >= 1.23 ``$http_<name>``: all values joined (``"; "`` for cookies, else ``", "``)."""
        values = self.get_all(name)
        if not values:
            return None
        return ("; " if _norm(name) == "cookie" else ", ").join(values)

    def set(self, name: str, value: Any) -> None:
        """Replace every occurrence of ``name`` (case-insensitive)."""
        self.remove(name)
        self.add(name, value)

    def add(self, name: str, value: Any) -> None:
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            self._items.append((name, _header_text(v)))

    def remove(self, name: str) -> None:
        key = _norm(name)
        self._items = [(n, v) for n, v in self._items if _norm(n) != key]

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def copy(self) -> Headers:
        return Headers(self)

    def to_lua(self, max_headers: int = 100) -> dict[str, str | list[str]]:
        """``ngx.req.get_headers()``: lowercase names, a string or a list for repeated headers."""
        out: dict[str, str | list[str]] = {}
        for name, value in self._items[:max_headers]:
            key = name.lower()
            current = out.get(key)
            if current is None:
                out[key] = value
            elif isinstance(current, list):
                current.append(value)
            else:
                out[key] = [current, value]
        return out

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.get_all(name))

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(n.lower() for n, _ in self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._items == other._items
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def _lua_number(value: float) -> str:
    """LuaJIT's ``tostring`` of a number (``%.14g``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = f"{value:.14g}"
    return text


def _header_text(value: Any) -> str:
    """Kong's ``normalize_multi_header``: numbers and booleans become strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _lua_number(value)
    raise LuaError(f"invalid header value: got {type(value).__name__}, expected string, number or boolean")


def _validate_header(name: Any, value: Any) -> None:
    """Kong's ``checks.validate_header``: a Lua error on a bad name or value."""
    if not isinstance(name, str):
        raise LuaError(f"invalid header name {name!r}: got {type(name).__name__}, expected string")
    ok_scalar = (str, int, float, bool)
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, ok_scalar) for v in values):
        raise LuaError(
            f'invalid header value for "{name}": got {_lua_type(value)}, expected array of string, '
            "string, number or boolean"
        )


def _lua_type(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str | bytes):
        return "string"
    return "table"


def _lua_tostring(value: Any) -> str:
    """How ``kong.log.*`` renders each argument (Lua ``tostring``)."""
    if value is None:
        return "nil"
    if isinstance(value, bool | int | float):
        return _lua_number(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return f"table: 0x{id(value) & 0xFFFFFFFF:08x}"


_MAXINT = 2**53


def lua_roundtrip(value: Any, *, keep_null: bool = False) -> Any:
    """A value as it comes back after a trip through Lua (lua-MessagePack in, out).

    ``nil`` map entries vanish (unless ``keep_null``: entities hold ``cjson.null``), an empty table is
    packed as an empty ARRAY, integral floats become integers, byte strings come back as text.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < _MAXINT else value
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, Mapping):
        out = {
            k: lua_roundtrip(v, keep_null=keep_null) for k, v in value.items() if keep_null or v is not None
        }
        return out if out else []
    if isinstance(value, list | tuple):
        return [lua_roundtrip(v, keep_null=keep_null) for v in value]
    return str(value)


def fix_mmap(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Kong's ``fix_mmap``: a string value becomes ``[string]``, a bare ``true`` flag ``[]``.

    An empty map stays a map (Kong packs it explicitly as one).
    """
    if value is None:
        return None
    out: dict[str, Any] = {}
    for k, v in value.items():
        if v is True:
            out[k] = []
        elif isinstance(v, str):
            out[k] = [v]
        else:
            out[k] = v
    return out


def cjson_encode(value: Any) -> str:
    """lua-cjson's encoding of a table: compact, ``/`` escaped."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/")


# ---------------------------------------------------------------------------------------------------------
# The simulated request
# ---------------------------------------------------------------------------------------------------------


def _default_route() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "name": "harness-route",
        "paths": ["/"],
        "protocols": ["http", "https"],
        "strip_path": True,
        "preserve_host": False,
    }


def _default_service() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "name": "harness-service",
        "protocol": "http",
        "host": "upstream.test",
        "port": 80,
        "path": None,
    }


@dataclass
class KongRequest:
    """One client request as Kong sees it when the plugin runs.

    ``consumer``/``credential`` are what an auth plugin stored (``kong.client.get_consumer()``); entity
    dicts may hold ``None`` for null columns, as Kong's cached entities hold ``cjson.null``.
    ``query`` is the raw query string without ``?``.
    """

    method: str = "GET"
    path: str = "/"
    query: str = ""
    headers: HeaderInput | Headers = field(default_factory=dict)
    body: bytes = b""
    consumer: Mapping[str, Any] | None = None
    credential: Mapping[str, Any] | None = None
    route: Mapping[str, Any] | None = field(default_factory=_default_route)
    service: Mapping[str, Any] | None = field(default_factory=_default_service)
    client_ip: str = "127.0.0.1"
    forwarded_ip: str | None = None
    scheme: str = "http"
    host: str | None = None
    port: int = 8000
    kong_request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    nginx_vars: Mapping[str, str] = field(default_factory=dict)
    ngx_ctx: Mapping[str, Any] = field(default_factory=dict)
    start_time: float = field(default_factory=time.time)


@dataclass
class LogLine:
    phase: str
    level: str
    message: str


@dataclass
class PdkCall:
    phase: str
    method: str
    args: list[Any]


@dataclass
class Outcome:
    """What happened to one request (or one phase of it), as Kong and the client would see it.

    ``status``/``body``/``headers`` describe the plugin's exit (``status`` is None when the request was
    proxied); ``client_status``/``client_body``/``response_headers`` are what the client receives.
    ``round_trips`` counts every RPC call made while running the events (``HandleEvent`` and each
    ``Step*``, failed ones and retries included); ``StartInstance``/``CloseInstance`` are listed apart in
    ``instance_calls``. ``errors`` holds everything real Kong would log as an error (unknown PDK method,
    Lua error, timer abort...): a well-behaved plugin leaves it empty.
    """

    status: int | None = None
    body: Any = None
    headers: dict[str, Any] = field(default_factory=dict)
    exit_method: str | None = None
    proxied: bool = False
    client_status: int | None = None
    client_body: bytes = b""
    upstream_headers: Headers = field(default_factory=Headers)
    response_headers: Headers = field(default_factory=Headers)
    upstream_name: str | None = None
    log_lines: list[LogLine] = field(default_factory=list)
    pdk_calls: list[PdkCall] = field(default_factory=list)
    rpcs: list[tuple[str, str]] = field(default_factory=list)
    round_trips: int = 0
    round_trips_by_phase: dict[str, int] = field(default_factory=dict)
    instance_calls: list[str] = field(default_factory=list)
    event_ids: dict[str, int] = field(default_factory=dict)
    phases_run: list[str] = field(default_factory=list)
    serialize_values: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        """PDK method names called, in order, all phases."""
        return [c.method for c in self.pdk_calls]

    def methods_in(self, phase: str) -> list[str]:
        return [c.method for c in self.pdk_calls if c.phase == phase]

    def rpc_methods(self, phase: str | None = None) -> list[str]:
        """RPC methods sent to the server (``plugin.HandleEvent``, ``plugin.Step``...)."""
        return [m for p, m in self.rpcs if phase is None or p == phase]

    def logs(self, level: str | None = None) -> list[str]:
        return [line.message for line in self.log_lines if level is None or line.level == level]

    def assert_clean(self) -> None:
        """Fail when Kong would have logged an error for this request."""
        if self.errors:
            raise AssertionError("Kong would log errors: " + "; ".join(self.errors))


# Kong phase names and the PDK phase groups of kong/pdk/private/phases.lua that matter here.
_REQUEST = frozenset({"rewrite", "access", "response", "header_filter", "body_filter", "log"})
_AUTH_AND_LATER = frozenset({"access", "response", "header_filter", "body_filter", "log"})
_BEFORE_CONTENT = frozenset({"rewrite", "access", "response"})
_REWRITE_ACCESS_HEADER = frozenset({"rewrite", "access", "response", "header_filter"})
_HEADER_BODY_LOG = frozenset({"response", "header_filter", "body_filter", "log"})
_SERVICE_REQUEST = frozenset({"rewrite", "access"})
_ANY = frozenset({"certificate", "preread", *_REQUEST})

STEP_METHOD = {
    "kong.client.get_credential": "plugin.StepCredential",
    "kong.client.load_consumer": "plugin.StepConsumer",
    "kong.client.get_consumer": "plugin.StepConsumer",
    "kong.client.authenticate": "plugin.StepCredential",
    "kong.node.get_memory_stats": "plugin.StepMemoryStats",
    "kong.router.get_route": "plugin.StepRoute",
    "kong.router.get_service": "plugin.StepService",
    "kong.request.get_query": "plugin.StepMultiMap",
    "kong.request.get_headers": "plugin.StepMultiMap",
    "kong.response.get_headers": "plugin.StepMultiMap",
    "kong.service.response.get_headers": "plugin.StepMultiMap",
}
"""``by_pdk_method`` of mp_rpc.lua's ``get_step_method``."""

_LOG_LEVELS = ("debug", "info", "notice", "warn", "err", "crit", "alert", "emerg")

_HTTP_MESSAGES = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Payment required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    429: "Too many requests",
    500: "An unexpected error occurred",
    502: "An invalid response was received from the upstream server",
    503: "The upstream server is currently unavailable",
    504: "The upstream server is timing out",
}

_JSON_CT = "application/json; charset=utf-8"
_ERROR_TEMPLATES = {
    "application/json": '{\n  "message":"%s",\n  "request_id":"%s"\n}',
    "text/plain": "%s\nrequest_id: %s\n",
    "text/html": (
        '<!doctype html>\n<html>\n  <head>\n    <meta charset="utf-8">\n    <title>Error</title>\n'
        "  </head>\n  <body>\n    <h1>Error</h1>\n    <p>%s.</p>\n    <p>request_id: %s</p>\n"
        "  </body>\n</html>\n"
    ),
}


@dataclass
class _PdkMethod:
    fn: Callable[..., Any]
    phases: frozenset[str]
    in_log_timer: bool
    """True when it works in Kong's log timer: an ``exposed_api`` override, or no request needed."""


class RequestRun:
    """Mutable state of one request across its phases (``ngx.ctx``, ``kong.ctx.shared``, headers...).

    Created by :meth:`KongSide.new_run`; pass it to :meth:`KongSide.run_phase` for each phase and call
    :meth:`proxy` between access and log to simulate the upstream answer.
    """

    def __init__(self, request: KongRequest, node_id: str) -> None:
        self.request = request
        self.node_id = node_id
        self.outcome = Outcome()
        self.request_headers = Headers(request.headers)  # ngx.req.set_header edits these in place
        self.ctx_shared: dict[str, Any] = {}
        self.ngx_ctx: dict[str, Any] = dict(request.ngx_ctx)
        self.consumer = request.consumer
        self.credential = request.credential
        self.upstream_status: int | None = None
        self.upstream_headers = Headers()
        self.upstream_body = b""
        self._response_ops: list[tuple[str, str, Any]] = []
        self.exited = False
        self.unexpected = False
        self.phase = ""
        self.saved: dict[str, Any] | None = None  # Kong's save_for_later data in the log timer
        self._methods = self._build_methods()

    # -- request lifecycle --------------------------------------------------------------------------------

    def proxy(self, status: int = 200, headers: HeaderInput | None = None, body: bytes = b"") -> None:
        """Simulate the upstream answer of a request the plugin let through."""
        if self.exited:
            raise RuntimeError("the request was answered by Kong; it cannot be proxied")
        self.outcome.proxied = True
        self.outcome.upstream_headers = self.request_headers.copy()
        self.upstream_status = status
        self.upstream_headers = Headers(headers)
        self.upstream_body = body
        self.outcome.client_status = status
        self.outcome.client_body = body
        self.outcome.response_headers = self.client_response_headers()

    def client_response_headers(self) -> Headers:
        """Upstream headers (if proxied), then the plugin's ``kong.response`` header edits, then exit's."""
        headers = self.upstream_headers.copy() if self.outcome.proxied else Headers()
        for op, name, value in self._response_ops:
            if op == "set":
                headers.set(name, value)
            elif op == "add":
                headers.add(name, value)
            else:
                headers.remove(name)
        return headers

    def _exit(self, method: str, status: int, body: Any, headers: Mapping[str, Any] | None) -> None:
        """Kong's delayed response, flushed by ``send()`` after the access phase."""
        out = self.outcome
        out.status, out.body, out.exit_method = status, body, method
        out.headers = dict(headers or {})
        for name, value in (headers or {}).items():
            if name.lower().replace("_", "-") != "transfer-encoding":
                self._response_ops.append(("set", name, value))
        given = {n.lower().replace("_", "-") for n in (headers or {})}
        if isinstance(body, Mapping | list):
            raw = cjson_encode(body).encode()
            if "content-type" not in given:
                self._response_ops.append(("set", "Content-Type", _JSON_CT))
        else:
            raw = body.encode() if isinstance(body, str) else b""
        if "content-length" not in given:
            self._response_ops.append(("set", "Content-Length", str(len(raw))))
        self.exited = True
        out.client_status = status
        out.client_body = raw
        out.response_headers = self.client_response_headers()

    def _unexpected_error(self, message: str) -> None:
        """A Lua error in the access coroutine: Kong answers 500 and marks the request KONG_UNEXPECTED."""
        self.outcome.errors.append(message)
        if self.phase in ("rewrite", "access") and not self.exited:
            self._exit("lua-error", 500, {"message": "An unexpected error occurred"}, None)
            self.unexpected = True

    def save_for_later(self) -> None:
        """plugin.lua's ``build_phases`` for ``log``: the data the timer will see."""
        self.saved = {
            "serialize_data": self.serialize(),
            "request_headers": self.request_headers.copy(),
            "response_headers": self.client_response_headers(),
            "response_status": self.outcome.client_status,
            "req_start_time": self.request.start_time,
        }

    # -- PDK dispatch -------------------------------------------------------------------------------------

    def call_pdk(self, method: str, args: list[Any]) -> Any:
        """Run one PDK call the way ``call_pdk_method`` does; may raise ``LuaError``/``EventEnded``."""
        self.outcome.pdk_calls.append(PdkCall(self.phase, method, list(args)))
        spec = self._methods.get(method)
        if spec is None:
            # Kong: kong.log.err("could not find pdk method: ", cmd) and answers nil.
            self.outcome.errors.append(
                f"could not find pdk method: {method} (or not simulated by the harness)"
            )
            return None
        if self.phase not in spec.phases:
            allowed = ", ".join(sorted(spec.phases))
            raise LuaError(f"{method}: function cannot be called in {self.phase} phase (only in: {allowed})")
        if self.saved is not None and not spec.in_log_timer:
            raise LuaError(f"{method}: no request found (Kong runs the log phase in a timer with saved data)")
        return spec.fn(*args)

    def _build_methods(self) -> dict[str, _PdkMethod]:
        m: dict[str, _PdkMethod] = {}

        def reg(
            name: str, fn: Callable[..., Any], phases: frozenset[str] = _ANY, timer: bool = False
        ) -> None:
            m[name] = _PdkMethod(fn, phases, timer)

        req = self.request

        # kong.client
        reg("kong.client.get_consumer", lambda: self._entity(self.consumer), _AUTH_AND_LATER, True)
        reg("kong.client.get_credential", lambda: self._entity(self.credential), _AUTH_AND_LATER, True)
        reg("kong.client.authenticate", self._authenticate, frozenset({"access"}))
        reg("kong.client.get_ip", lambda: req.client_ip)
        reg("kong.client.get_forwarded_ip", lambda: req.forwarded_ip or req.client_ip)
        reg("kong.client.get_port", lambda: 40000)
        reg("kong.client.get_forwarded_port", lambda: 40000)
        reg("kong.client.get_protocol", lambda *_: req.scheme)
        # kong.request
        reg("kong.request.get_method", lambda: req.method.upper(), _REQUEST)
        reg("kong.request.get_path", lambda: _normalize_path(req.path), _REQUEST)
        reg("kong.request.get_raw_path", lambda: req.path, _REQUEST)
        reg("kong.request.get_path_with_query", self._path_with_query, _REQUEST)
        reg("kong.request.get_raw_query", lambda: req.query, _REQUEST)
        reg("kong.request.get_query", self._get_query, _REQUEST)
        reg("kong.request.get_query_arg", self._get_query_arg, _REQUEST)
        reg("kong.request.get_header", self._request_get_header, _REQUEST, True)
        reg("kong.request.get_headers", self._request_get_headers, _REQUEST, True)
        reg("kong.request.get_raw_body", lambda: req.body, _BEFORE_CONTENT)
        reg("kong.request.get_scheme", lambda: req.scheme, _REQUEST)
        reg("kong.request.get_host", self._host, _REQUEST)
        reg("kong.request.get_port", lambda: req.port, _REQUEST)
        reg("kong.request.get_forwarded_scheme", lambda: req.scheme, _REQUEST)
        reg("kong.request.get_forwarded_host", self._host, _REQUEST)
        reg("kong.request.get_forwarded_port", lambda: req.port, _REQUEST)
        reg("kong.request.get_http_version", lambda: 1.1, _REQUEST)
        reg("kong.request.get_start_time", lambda: int(req.start_time * 1000), _REQUEST, True)
        reg("kong.request.get_uri_captures", lambda: {"unnamed": [], "named": []}, _REQUEST, True)
        # kong.router
        reg("kong.router.get_route", lambda: self._entity(req.route), _AUTH_AND_LATER, True)
        reg("kong.router.get_service", lambda: self._entity(req.service), _AUTH_AND_LATER, True)
        # kong.service.request (ngx.req.set_header: edits the request headers seen by everyone after)
        reg("kong.service.request.set_header", self._svc_set_header, _SERVICE_REQUEST)
        reg("kong.service.request.add_header", self._svc_add_header, _SERVICE_REQUEST)
        reg("kong.service.request.clear_header", self._svc_clear_header, _SERVICE_REQUEST)
        reg("kong.service.request.set_headers", self._svc_set_headers, _SERVICE_REQUEST)
        reg("kong.service.set_upstream", self._set_upstream, _SERVICE_REQUEST)
        # kong.response
        reg("kong.response.set_header", self._resp_op("set"), _REWRITE_ACCESS_HEADER)
        reg("kong.response.add_header", self._resp_op("add"), _REWRITE_ACCESS_HEADER)
        reg("kong.response.clear_header", self._resp_clear, _REWRITE_ACCESS_HEADER)
        reg("kong.response.set_headers", self._resp_set_headers, _REWRITE_ACCESS_HEADER)
        reg("kong.response.exit", self._response_exit, _REWRITE_ACCESS_HEADER)
        reg("kong.response.error", self._response_error, _REWRITE_ACCESS_HEADER)
        reg("kong.response.get_status", self._resp_status, _ANY, True)
        reg("kong.response.get_header", self._resp_header, _ANY, True)
        reg("kong.response.get_headers", self._resp_headers, _ANY, True)
        reg("kong.response.get_source", self._resp_source, _ANY, True)
        # kong.service.response
        reg("kong.service.response.get_status", lambda: self.upstream_status, _HEADER_BODY_LOG)
        reg("kong.service.response.get_header", lambda n: self.upstream_headers.get(n), _HEADER_BODY_LOG)
        reg(
            "kong.service.response.get_headers",
            lambda *_: fix_mmap(self.upstream_headers.to_lua()),
            _HEADER_BODY_LOG,
        )
        # exposed_api overrides (plugin.lua): work in every phase and in the log timer
        reg("kong.ctx.shared.get", lambda k=None: lua_roundtrip(self._ctx_shared().get(k)), _ANY, True)
        reg("kong.ctx.shared.set", self._ctx_shared_set, _ANY, True)
        reg("kong.nginx.get_ctx", lambda k=None: lua_roundtrip(self._ngx_ctx().get(k)), _ANY, True)
        reg("kong.nginx.set_ctx", self._ngx_ctx_set, _ANY, True)
        reg("kong.nginx.req_start_time", lambda: req.start_time, _ANY, True)
        reg("kong.nginx.get_var", self._nginx_var, _ANY, False)  # ngx.var: no request in a timer
        reg("kong.nginx.get_subsystem", lambda: "http", _ANY, True)
        reg("kong.log.serialize", self._log_serialize, _ANY, True)
        reg("kong.log.set_serialize_value", self._set_serialize_value, _REQUEST, True)
        # kong.log.* and kong.node
        reg("kong.log", self._logger("notice"), _ANY, True)
        for level in _LOG_LEVELS:
            reg(f"kong.log.{level}", self._logger(level), _ANY, True)
        reg("kong.log.inspect", self._logger("debug"), _ANY, True)
        reg("kong.node.get_id", lambda: self.node_id, _ANY, True)
        reg("kong.node.get_hostname", socket.gethostname, _ANY, True)
        return m

    # -- implementations ----------------------------------------------------------------------------------

    def _set_upstream(self, name: str) -> bool:
        """kong.service.set_upstream: the load-balancing step will use the named Upstream entity."""
        self.outcome.upstream_name = name
        return True

    def _entity(self, value: Mapping[str, Any] | None) -> Any:
        return None if value is None else lua_roundtrip(value, keep_null=True)

    def _authenticate(self, consumer: Any = None, credential: Any = None) -> None:
        if consumer is None and credential is None:
            raise LuaError("either credential or consumer must be provided")
        self.consumer, self.credential = consumer, credential

    def _host(self) -> str:
        if self.request.host:
            return self.request.host.lower()
        host = self.request_headers.get("host") or "localhost"
        return host.split(":", 1)[0].lower()

    def _path_with_query(self) -> str:
        return self.request.path + ("?" + self.request.query if self.request.query else "")

    def _get_query(self, max_args: Any = None) -> dict[str, Any] | None:
        return fix_mmap(_parse_query(self.request.query, _limit(max_args, 100)))

    def _get_query_arg(self, name: Any = None) -> Any:
        if not isinstance(name, str):
            raise LuaError("query argument name must be a string")
        value = _parse_query(self.request.query, 100).get(name)
        return value[0] if isinstance(value, list) else value

    def _request_get_header(self, name: Any = None) -> str | None:
        if self.saved is not None:  # exposed_api: saved.request_headers[name], first value
            return self.saved["request_headers"].get(name) if isinstance(name, str) else None
        if not isinstance(name, str):
            raise LuaError("header name must be a string")
        return self.request_headers.joined(name)  # var["http_" .. name]: nginx joins repeated headers

    def _request_get_headers(self, max_headers: Any = None) -> dict[str, Any] | None:
        if self.saved is not None:
            return fix_mmap(self.saved["request_headers"].to_lua())
        return fix_mmap(self.request_headers.to_lua(_limit(max_headers, 100)))

    def _svc_set_header(self, name: Any = None, value: Any = None) -> None:
        _validate_header(name, value)
        self.request_headers.set(name, value)

    def _svc_add_header(self, name: Any = None, value: Any = None) -> None:
        _validate_header(name, value)
        self.request_headers.add(name, value)

    def _svc_clear_header(self, name: Any = None) -> None:
        if not isinstance(name, str):
            raise LuaError("header name must be a string")
        self.request_headers.remove(name)

    def _svc_set_headers(self, headers: Any = None) -> None:
        if not isinstance(headers, Mapping):
            raise LuaError("headers must be a table")
        for name, value in headers.items():
            _validate_header(name, value)
        for name, value in headers.items():
            self.request_headers.set(name, value)

    def _resp_op(self, op: str) -> Callable[..., None]:
        def apply(name: Any = None, value: Any = None) -> None:
            _validate_header(name, value)
            self._response_ops.append((op, name, value))

        return apply

    def _resp_clear(self, name: Any = None) -> None:
        if not isinstance(name, str):
            raise LuaError("header name must be a string")
        self._response_ops.append(("clear", name, None))

    def _resp_set_headers(self, headers: Any = None) -> None:
        if not isinstance(headers, Mapping):
            raise LuaError("headers must be a table")
        for name, value in headers.items():
            _validate_header(name, value)
        for name, value in headers.items():
            self._response_ops.append(("set", name, value))

    def _check_exit_args(self, status: Any, minimum: int, headers: Any) -> None:
        if not isinstance(status, int) or isinstance(status, bool):
            raise LuaError("code must be a number")
        if not minimum <= status <= 599:
            raise LuaError(f"code must be a number between {minimum} and 599")
        if headers is not None:
            if not isinstance(headers, Mapping):
                raise LuaError("headers must be a nil or table")
            for name, value in headers.items():
                _validate_header(name, value)

    def _response_exit(self, status: Any = None, body: Any = None, headers: Any = None) -> None:
        self._check_exit_args(status, 100, headers)
        if body is not None and not isinstance(body, str | Mapping | list):
            raise LuaError("body must be a nil, string or table")
        self._exit("kong.response.exit", status, body, headers)
        raise EventEnded

    def _response_error(self, status: Any = None, message: Any = None, headers: Any = None) -> None:
        self._check_exit_args(status, 400, headers)
        if isinstance(message, Mapping | list):
            message = cjson_encode(message)
        if message is not None and not isinstance(message, str):
            raise LuaError("message must be a nil, a string or a table")
        headers = dict(headers or {})
        content_type = headers.get("Content-Type")  # Kong looks up this exact key
        if isinstance(content_type, list):
            content_type = content_type[0]
        if content_type is None:
            content_type = _response_type(self.request_headers.to_lua().get("accept"))
        headers["Content-Type"] = content_type
        media = content_type.split(";", 1)[0].strip().lower()
        template = _ERROR_TEMPLATES.get(media, _ERROR_TEMPLATES["application/json"])
        text = (
            message
            if message is not None
            else _HTTP_MESSAGES.get(status, f"The upstream server responded with {status}")
        )
        self._exit("kong.response.error", status, template % (text, self.request.kong_request_id), headers)
        raise EventEnded

    def _resp_status(self) -> int | None:
        if self.saved is not None:
            status: int | None = self.saved["response_status"]
            return status
        if self.phase not in _HEADER_BODY_LOG:
            raise LuaError(f"kong.response.get_status: function cannot be called in {self.phase} phase")
        return self.outcome.client_status

    def _resp_headers_now(self) -> Headers:
        if self.saved is not None:
            saved: Headers = self.saved["response_headers"]
            return saved
        if self.phase not in _HEADER_BODY_LOG:
            raise LuaError(f"kong.response.get_headers: function cannot be called in {self.phase} phase")
        return self.client_response_headers()

    def _resp_header(self, name: Any = None) -> str | None:
        if not isinstance(name, str):
            raise LuaError("header name must be a string")
        return self._resp_headers_now().get(name)

    def _resp_headers(self, max_headers: Any = None) -> dict[str, Any] | None:
        return fix_mmap(self._resp_headers_now().to_lua(_limit(max_headers, 100)))

    def _resp_source(self) -> str:
        if self.saved is None and self.phase not in _HEADER_BODY_LOG:
            raise LuaError(f"kong.response.get_source: function cannot be called in {self.phase} phase")
        if self.unexpected:
            return "error"
        if self.exited:
            return "exit"
        return "service" if self.outcome.proxied else "error"

    def _ctx_shared(self) -> dict[str, Any]:
        return self.ctx_shared

    def _ctx_shared_set(self, key: Any = None, value: Any = None) -> None:
        self.ctx_shared[key] = value

    def _ngx_ctx(self) -> dict[str, Any]:
        return self.ngx_ctx

    def _ngx_ctx_set(self, key: Any = None, value: Any = None) -> None:
        self.ngx_ctx[key] = value

    def _nginx_var(self, name: Any = None) -> str | None:
        if not isinstance(name, str):
            raise LuaError("bad variable name")
        req = self.request
        if name in req.nginx_vars:
            return req.nginx_vars[name]
        if name.startswith("http_"):
            return self.request_headers.joined(name[5:])
        if name.startswith("upstream_http_"):
            return self.upstream_headers.joined(name[14:]) if self.outcome.proxied else None
        if name.startswith("arg_"):
            for part in req.query.split("&"):
                key, _, value = part.partition("=")
                if key.lower() == name[4:].lower():
                    return value
            return None
        table: dict[str, str | None] = {
            "request_id": req.kong_request_id,
            "kong_request_id": req.kong_request_id,
            "remote_addr": req.forwarded_ip or req.client_ip,
            "realip_remote_addr": req.client_ip,
            "binary_remote_addr": None,
            "host": self._host(),
            "scheme": req.scheme,
            "server_port": str(req.port),
            "request_method": req.method.upper(),
            "request_uri": self._path_with_query(),
            "uri": _normalize_path(req.path),
            "args": req.query or None,
            "content_type": self.request_headers.get("content-type"),
            "upstream_status": str(self.upstream_status) if self.upstream_status is not None else None,
        }
        return table.get(name)

    def _logger(self, level: str) -> Callable[..., None]:
        def log(*args: Any) -> None:
            self.outcome.log_lines.append(LogLine(self.phase, level, "".join(_lua_tostring(a) for a in args)))

        return log

    def _set_serialize_value(self, key: Any = None, value: Any = None, _options: Any = None) -> None:
        if not isinstance(key, str):
            raise LuaError("key must be a string")
        self.outcome.serialize_values[key] = value

    def serialize(self) -> dict[str, Any]:
        """A subset of ``kong.log.serialize()`` (what a log plugin would ship)."""
        req = self.request
        data: dict[str, Any] = {
            "request": {
                "id": req.kong_request_id,
                "method": req.method.upper(),
                "uri": self._path_with_query(),
                "url": f"{req.scheme}://{self._host()}:{req.port}{self._path_with_query()}",
                "querystring": _parse_query(req.query, 100),
                "headers": self.request_headers.to_lua(),
                "size": len(req.body),
            },
            "response": {
                "status": self.outcome.client_status,
                "headers": self.client_response_headers().to_lua(),
                "size": len(self.outcome.client_body),
            },
            "route": req.route,
            "service": req.service,
            "consumer": self.consumer,
            "client_ip": req.client_ip,
            "started_at": int(req.start_time * 1000),
            "source": "error" if self.unexpected else "exit" if self.exited else "service",
        }
        for key, value in self.outcome.serialize_values.items():
            target = data
            *parents, last = key.split(".")
            for part in parents:
                target = target.setdefault(part, {})
            target[last] = value
        return data

    def _log_serialize(self) -> str:
        if self.saved is not None:
            return cjson_encode(self.saved["serialize_data"])
        if self.phase != "log":
            raise LuaError(f"kong.log.serialize: function cannot be called in {self.phase} phase")
        return cjson_encode(self.serialize())


def _limit(value: Any, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or not 1 <= value <= 1000:
        raise LuaError("max_args/max_headers must be a number between 1 and 1000")
    return value


def _parse_query(query: str, max_args: int) -> dict[str, Any]:
    """``ngx.req.get_uri_args``: ``a=1&a=2&flag&empty=`` -> ``{a: [1, 2], flag: true, empty: ""}``."""
    out: dict[str, Any] = {}
    count = 0
    for part in query.split("&"):
        value: str | bool
        if not part or part.startswith("="):
            continue
        count += 1
        if count > max_args:
            break
        if "=" in part:
            raw_key, raw_value = part.split("=", 1)
            key, value = unquote_plus(raw_key), unquote_plus(raw_value)
        else:
            key, value = unquote_plus(part), True
        if key in out:
            current = out[key]
            out[key] = [*current, value] if isinstance(current, list) else [current, value]
        else:
            out[key] = value
    return out


_UNRESERVED = re.compile(r"%(2[dDeE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])")


def _normalize_path(path: str) -> str:
    """kong.tools.uri.normalize: decode unreserved escapes, merge slashes, drop dot segments."""
    path = _UNRESERVED.sub(lambda m: unquote(m.group(0)), path)
    path = re.sub(r"%[0-9a-f]{2}", lambda m: m.group(0).upper(), path)
    segments: list[str] = []
    for seg in re.sub(r"/{2,}", "/", path).split("/"):
        if seg == "..":
            if len(segments) > 1:
                segments.pop()
        elif seg != ".":
            segments.append(seg)
    result = "/".join(segments)
    if path.endswith(("/.", "/..")) and not result.endswith("/"):
        result += "/"
    return result or "/"


def _response_type(accept: Any) -> str:
    """kong.tools.utils.get_response_type: JSON unless the client prefers text or HTML."""
    if isinstance(accept, list):
        accept = accept[0] if accept else None
    if isinstance(accept, str):
        for media in (m.split(";", 1)[0].strip().lower() for m in accept.split(",")):
            if media == "text/html":
                return "text/html; charset=utf-8"
            if media == "text/plain":
                return "text/plain; charset=utf-8"
            if media in ("application/json", "*/*"):
                return _JSON_CT
    return _JSON_CT
