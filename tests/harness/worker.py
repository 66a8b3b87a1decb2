"""One nginx worker of Kong: its instance table and its pool, running requests through the plugin server.

``kong/runloop/plugin_servers/plugin.lua`` (3.7+; ``init.lua`` before): every worker keeps its own
``running_instances`` table, keyed by plugin id, and starts an instance the first time a request needs
one or when the config's ``__seq__`` changed (``StartInstance`` with the new config, then
``CloseInstance`` of the old id); ``rpc/mp_rpc.lua``'s ``handle_event`` runs the event and, on
"no plugin instance", resets by the release's rules (:mod:`tests.harness.versions`) and retries.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.harness.config import PluginConfig, fill_schema
from tests.harness.pdk import (
    STEP_METHOD,
    EventEnded,
    HeaderInput,
    KongRequest,
    LogLine,
    LuaError,
    Outcome,
    RequestRun,
)
from tests.harness.process import PluginInfo
from tests.harness.versions import KongRules, rules_for
from tests.harness.wire import (
    DEFAULT_POOL_SIZE,
    DEFAULT_READ_TIMEOUT,
    Connector,
    KongRpcError,
    Rpc,
    connect_unix,
)

MAX_RETRIES = 20
"""Kong retries an event after "no plugin instance" without bound; the harness stops at this many and
reports a bypass, so that a ping-pong between two configs fails a test instead of hanging it."""


class KongWouldBypass(Exception):
    """Real Kong would log this error and proxy the request WITHOUT running the plugin.

    Raised instead of returning an outcome, because for a gate this is a silent fail-open.
    """

    def __init__(
        self, error: str, *, phase: str, outcome: Outcome, cause: BaseException | None = None
    ) -> None:
        super().__init__(f"Kong would proxy the request without the plugin ({phase} phase): {error}")
        self.error = error
        self.phase = phase
        self.outcome = outcome
        self.cause = cause


@dataclass
class StartedInstance:
    """One ``plugin.StartInstance`` the harness made: what was sent and what the server answered."""

    plugin_id: str
    seq: int
    instance_id: int
    config_json: str
    answer: Mapping[str, Any]


@dataclass
class InstanceInfo:
    """Kong's ``running_instances[plugin_id]`` entry; ``id is None`` means someone is starting it."""

    seq: int
    plugin_id: str
    id: int | None = None


class KongSide:
    """Kong's side of the plugin-server protocol for one plugin, in one nginx worker.

    Thread-safe: many threads may run requests at once, as nginx runs many requests in a worker.
    ``kong_version`` picks the release's rules (:data:`tests.harness.versions.RULES`); ``pool_size`` plays
    ``lua_socket_pool_size``; ``connect`` opens a connection (a :class:`~tests.harness.node.KongNode` worker
    connects from a process of its own, so that the server sees one peer pid per worker, as in Kong).
    ``post_reset_event`` is called with this side when its rules post the ``reset_instances`` worker
    event; a node delivers it to the other workers (:meth:`reset_instances` with no plugin id).
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        plugin_info: PluginInfo,
        *,
        timeout: float = DEFAULT_READ_TIMEOUT,
        node_id: str | None = None,
        claim_wait: float = 10.0,
        kong_version: str = "3.9",
        pool_size: int = DEFAULT_POOL_SIZE,
        connect: Connector = connect_unix,
        worker_id: int = 0,
        post_reset_event: Callable[[KongSide], None] | None = None,
    ) -> None:
        self.rules: KongRules = rules_for(kong_version)
        self.kong_version = kong_version
        self.worker_id = worker_id
        self.socket_path = os.fspath(socket_path)
        self.plugin_info = plugin_info
        self.timeout = timeout
        self.node_id = node_id or str(uuid.uuid4())
        self.claim_wait = claim_wait  # plugin.lua's WAIT_TIME for an instance another request starts
        self.post_reset_event = post_reset_event
        self._rpc = Rpc(self.socket_path, timeout=timeout, pool_size=pool_size, connect=connect)
        self._instances: dict[str, InstanceInfo] = {}
        self._instances_cond = threading.Condition()
        self._started: list[StartedInstance] = []
        self._closed_ids: list[int] = []
        self.resets: list[str | None] = []  # plugin id of each reset this worker made; None: an event

    # -- wire ---------------------------------------------------------------------------------------------

    def call(self, method: str, *args: Any, trace: Callable[[str], None] | None = None) -> Any:
        """One MessagePack-RPC call on a pooled connection of this worker (see :class:`Rpc`)."""
        return self._rpc.call(method, *args, trace=trace)

    @property
    def notifications(self) -> list[tuple[Any, Any]]:
        return self._rpc.notifications

    def close(self) -> None:
        """Close the pooled connections."""
        self._rpc.close()

    def __enter__(self) -> KongSide:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def connections_opened(self) -> int:
        return self._rpc.pool.opened

    # -- instances ----------------------------------------------------------------------------------------

    def build_config(self, plugin: PluginConfig) -> dict[str, Any]:
        """The table Kong JSON-encodes into ``StartInstance.Config``.

        Every schema field (defaults filled, unset ones null) plus what Kong's plugins iterator adds. Keys
        whose Lua value is nil (e.g. ``route_id`` of a plugin not bound to a route) are absent, as in cjson.
        """
        cfg = fill_schema(self.plugin_info.config_fields, plugin.config)
        extra: dict[str, Any] = {
            "route_id": plugin.route_id,
            "service_id": plugin.service_id,
            "consumer_id": plugin.consumer_id,
            "plugin_instance_name": plugin.instance_name,
            "__plugin_id": plugin.plugin_id,
            "__key__": ":".join(
                [
                    "plugins",
                    self.plugin_info.name,
                    plugin.route_id or "",
                    plugin.service_id or "",
                    plugin.consumer_id or "",
                    "",
                    "00000000-0000-0000-0000-000000000000",
                ]
            ),
            "__seq__": plugin.seq,
        }
        if not self.rules.sends_seq:
            del extra["__seq__"]  # see KongRules.sends_seq
        cfg.update({k: v for k, v in extra.items() if v is not None})
        return cfg

    @property
    def started_instances(self) -> list[StartedInstance]:
        with self._instances_cond:
            return list(self._started)

    @property
    def closed_instance_ids(self) -> list[int]:
        with self._instances_cond:
            return list(self._closed_ids)

    def cached_instance_id(self, plugin: PluginConfig) -> int | None:
        with self._instances_cond:
            info = self._instances.get(plugin.plugin_id)
            return info.id if info is not None else None

    def get_instance_id(self, plugin: PluginConfig, outcome: Outcome | None = None) -> int:
        """plugin.lua's ``get_instance_id``: cached per plugin id, restarted when ``__seq__`` changes.

        A failed StartInstance is a Lua ``error()`` in Kong (``LuaError`` here); failing to claim an
        instance another request is starting returns an error (``KongRpcError``).
        """
        key = plugin.plugin_id
        deadline = time.monotonic() + self.claim_wait
        with self._instances_cond:
            info = self._instances.get(key)
            while info is not None and info.id is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._instances.pop(key, None)
                    name = self.plugin_info.name
                    raise KongRpcError(f"Could not claim instance_id for {name} (key: {key})")
                self._instances_cond.wait(remaining)
                info = self._instances.get(key)
            if info is not None and info.id is not None and info.seq == plugin.seq:
                return info.id
            old_id = info.id if info is not None else None
            if info is None:
                info = InstanceInfo(seq=plugin.seq, plugin_id=key)
                self._instances[key] = info
            else:
                info.id = None
        config_json = json.dumps(self.build_config(plugin))
        if outcome is not None:
            outcome.instance_calls.append("plugin.StartInstance")
        try:
            answer = self.call("plugin.StartInstance", {"Name": self.plugin_info.name, "Config": config_json})
        except KongRpcError as exc:
            with self._instances_cond:
                if self._instances.get(key) is info:
                    del self._instances[key]
                self._instances_cond.notify_all()
            raise LuaError(f"starting instance: {exc}") from exc
        with self._instances_cond:
            info.id = int(answer["Id"])
            info.seq = plugin.seq
            self._started.append(StartedInstance(key, plugin.seq, info.id, config_json, answer))
            self._instances_cond.notify_all()
            new_id = info.id
        if old_id is not None:
            if outcome is not None:
                outcome.instance_calls.append("plugin.CloseInstance")
            try:
                self.call("plugin.CloseInstance", old_id)
                with self._instances_cond:
                    self._closed_ids.append(old_id)
            except KongRpcError:
                pass  # Kong: "don't care if there's an error, maybe other thread closed it first"
        return new_id

    def reset_instances(self, plugin_id: str | None = None) -> None:
        """What Kong forgets after "no plugin instance", by the rules of ``kong_version``.

        With a ``plugin_id`` this worker met the error: Kong 3.4 forgets only that plugin id
        (``reset_instance``), 3.5 and later every instance of the plugin in this worker at once
        (``reset_instances_for_plugin``) and post the ``reset_instances`` worker event, handed to
        ``post_reset_event``. Without one, the event reached this worker: it forgets every instance.
        """
        with self._instances_cond:
            if plugin_id is not None and self.rules.reset_scope == "plugin id":
                self._instances.pop(plugin_id, None)
            else:
                self._instances.clear()
            self.resets.append(plugin_id)
            self._instances_cond.notify_all()
        if plugin_id is not None and self.rules.posts_reset_event and self.post_reset_event is not None:
            self.post_reset_event(self)

    # -- events -------------------------------------------------------------------------------------------

    def new_run(self, request: KongRequest) -> RequestRun:
        return RequestRun(request, self.node_id)

    def run_phase(self, plugin: PluginConfig, phase: str, request: KongRequest | RequestRun) -> Outcome:
        """Run one phase's event as Kong does and return the request's (cumulative) outcome.

        In ``rewrite``/``access``, an RPC failure raises :class:`KongWouldBypass`. ``log`` runs as Kong's
        timer with saved data; its failures are only logged by Kong, so they land in ``outcome.errors``.
        """
        if phase not in self.plugin_info.phases:
            info = self.plugin_info
            raise ValueError(f"{info.name} has no {phase} phase (Phases: {info.phases})")
        run = request if isinstance(request, RequestRun) else self.new_run(request)
        out = run.outcome
        run.phase = phase
        out.phases_run.append(phase)
        if phase == "log":
            run.save_for_later()
        try:
            self._handle_event(plugin, phase, run, retries=0)
        except BypassError as exc:
            if phase == "log":
                out.errors.append(f"log timer: {exc.message}")
            else:
                # Kong goes on without the plugin, with the request as the plugin left it: the headers
                # it set so far travel to wherever the request is proxied (the upstream it named, or
                # the service's host).
                out.upstream_headers = run.request_headers.copy()
                raise KongWouldBypass(exc.message, phase=phase, outcome=out, cause=exc.cause) from exc.cause
        finally:
            run.saved = None
        return out

    def request(
        self,
        plugin: PluginConfig,
        request: KongRequest,
        upstream_status: int = 200,
        upstream_headers: HeaderInput | None = None,
        upstream_body: bytes = b"",
    ) -> Outcome:
        """A whole request: rewrite (global plugins only), access, upstream (if not exited), log.

        Like Kong, the log phase runs for every request, also when the plugin (or a Lua error) answered it.
        """
        run = self.new_run(request)
        phases = self.plugin_info.phases
        if "rewrite" in phases and plugin.is_global:
            self.run_phase(plugin, "rewrite", run)
        if "access" in phases and not run.exited:
            self.run_phase(plugin, "access", run)
        if not run.exited:
            run.proxy(upstream_status, upstream_headers, upstream_body)
            if "response" in phases:
                self.run_phase(plugin, "response", run)
        if "log" in phases:
            self.run_phase(plugin, "log", run)
        return run.outcome

    def _handle_event(self, plugin: PluginConfig, phase: str, run: RequestRun, retries: int) -> None:
        """mp_rpc.lua's ``Rpc:handle_event`` + ``bridge_loop``."""
        out = run.outcome

        def trace(method: str) -> None:
            out.rpcs.append((phase, method))
            out.round_trips += 1
            out.round_trips_by_phase[phase] = out.round_trips_by_phase.get(phase, 0) + 1

        instance_id: int | None
        try:
            instance_id = self.get_instance_id(plugin, out)
        except LuaError as exc:
            run._unexpected_error(f"{exc}")
            return
        except KongRpcError as exc:
            if self.rules.claim_failure != "sent without an instance id":
                raise BypassError(exc.message, exc) from exc
            out.log_lines.append(LogLine(phase, "err", exc.message))
            instance_id = None  # 3.4 ignores get_instance_id's error and sends a nil InstanceId
        try:
            event = {"InstanceId": instance_id, "EventName": phase}
            step_in = self.call("plugin.HandleEvent", event, trace=trace)
            event_id = step_in["EventId"]
            out.event_ids[phase] = event_id
            while step_in["Data"] != "ret":
                data = step_in["Data"]
                method = data["Method"]
                args = data.get("Args") or []
                try:
                    result = run.call_pdk(method, list(args))
                except EventEnded:
                    return  # coroutine.yield(): no further Step for this event
                except LuaError as exc:
                    what = "log timer aborted" if phase == "log" else "lua error"
                    run._unexpected_error(f"{what}: {exc}")
                    return  # the Python handler is left waiting for an answer that never comes
                if isinstance(result, str) and method.endswith("get_raw_body"):
                    result = result.encode()  # fix_raw: raw bodies travel as msgpack binary
                step_method = STEP_METHOD.get(method, "plugin.Step")
                step_in = self.call(step_method, {"EventId": event_id, "Data": result}, trace=trace)
        except KongRpcError as exc:
            if "no plugin instance" in exc.message.lower():
                self.reset_instances(plugin.plugin_id)
                run.outcome.log_lines.append(LogLine(phase, "warn", exc.message))
                if retries >= MAX_RETRIES:
                    message = f"{exc.message} (again after re-creating the instance {retries} times)"
                    raise BypassError(message, exc) from exc
                self._handle_event(plugin, phase, run, retries + 1)
                return
            raise BypassError(exc.message, exc) from exc


class BypassError(Exception):
    def __init__(self, message: str, cause: BaseException | None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause
