"""Kong's plugin protocol as the server answers it: method names, the instance table, the answers.

Pure: no socket, no greenlet. What Kong sends and expects is read from Kong's
``kong/runloop/plugin_servers/rpc/mp_rpc.lua`` and from kong-pdk 0.36 (``kong_pdk/server.py``,
``listener.py``, ``module.py``), whose answers this server gives field for field:

- a request is ``[0, msgid, "plugin.<Method>", [args]]``, the answer ``[1, msgid, error, result]``;
- ``StartInstance {Name, Config: <JSON>}`` -> ``{Name, Id, Config, StartTime}``; ``CloseInstance id``;
  ``GetStatus``; ``GetPluginInfo name``; ``SetPluginDir dir``;
- ``HandleEvent {InstanceId, EventName}`` and every ``Step*`` ``{EventId, Data}`` -> ``{Data, EventId}``,
  ``Data`` being the phase's next PDK call ``{Method, Args}`` or ``"ret"`` once the phase returned;
- an error whose text holds ``no plugin instance`` makes Kong start the instance again and retry;
  every other error makes Kong log it and run the request without the plugin.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

RET = "ret"  # Data of the answer that ends an event: the phase returned
TERMINAL_METHODS = frozenset({"kong.response.exit", "kong.response.error"})  # Kong sends no Step after
PHASES = ("certificate", "rewrite", "log", "access", "preread", "response")  # kong_pdk/module.py
ID_SPAN = 2**52  # ids start at a random point below this: unique across restarts, exact as Lua doubles
REQUEST, RESPONSE = 0, 1  # MessagePack-RPC message types


class CallError(Exception):
    """A call Kong made that fails: Kong receives the text as the call's error."""


class BadMessage(Exception):
    """Not a MessagePack-RPC request: the connection that sent it is closed."""


def first_map(args: list[Any], what: str) -> Mapping[str, Any]:
    if not args or not isinstance(args[0], dict):
        raise CallError(f"{what} takes a map")
    return args[0]


@dataclass(frozen=True)
class PluginInfo:
    """The plugin as Kong learns it: kong-pdk's ``Module`` of a dedicated server."""

    name: str
    cls: type
    version: str | None
    priority: int
    schema: list[Any]
    phases: tuple[str, ...]
    mtime: float
    load_time: float = field(default_factory=time.time)

    @classmethod
    def of(cls, name: str, plugin: type, version: str | None, priority: int, schema: list[Any]) -> PluginInfo:
        phases = tuple(phase for phase in PHASES if hasattr(plugin, phase))
        try:
            mtime = os.stat(__file__).st_mtime
        except OSError:
            mtime = 0.0
        return cls(name, plugin, version, priority, list(schema), phases, mtime)

    def info(self) -> dict[str, Any]:
        """``GetPluginInfo``'s answer, and what ``--dump`` prints."""
        return {
            "Name": self.name,
            "Phases": list(self.phases),
            "Priority": self.priority,
            "Version": self.version,
            "Schema": {"name": self.name, "fields": [{"config": {"type": "record", "fields": self.schema}}]},
        }


@dataclass
class Instance:
    """One plugin entry of Kong's: its config and the plugin object built from it."""

    id: int
    name: str
    config: Any
    plugin: Any
    start_time: float
    last_used: float = 0.0

    def status(self) -> dict[str, Any]:
        return {"Name": self.name, "Id": self.id, "Config": self.config, "StartTime": self.start_time}


class Instances:
    """The server's instance table. Ids start at a random point (see ``ID_SPAN``): after a restart, an
    id Kong still holds names no instance, and Kong starts that entry again with its own config."""

    def __init__(self, plugin: PluginInfo, first_id: int | None = None) -> None:
        self.plugin = plugin
        self.table: dict[int, Instance] = {}
        self.next_id = secrets.randbelow(ID_SPAN) if first_id is None else first_id
        self.last_start = 0.0
        self.last_close = 0.0

    def parse_start(self, args: list[Any]) -> tuple[str, Any]:
        """``StartInstance``'s name and decoded config, checked before any plugin code runs."""
        request = first_map(args, "StartInstance")
        name = request.get("Name")
        if name != self.plugin.name:
            raise CallError(f"{name} not initialized")
        try:
            return name, json.loads(request.get("Config") or "null")
        except (TypeError, ValueError) as error:
            raise CallError(f"StartInstance: the config is not JSON: {error}") from None

    def add(self, name: str, config: Any, build: Callable[[Any], Any]) -> dict[str, Any]:
        """Build the plugin object (plugin code: may block, may raise) and number it."""
        plugin = build(config)
        iid = self.next_id
        self.next_id = iid + 1
        now = time.time()
        self.last_start = now
        self.table[iid] = Instance(iid, name, config, plugin, now)
        return {"Name": name, "Id": iid, "Config": config, "StartTime": now}

    def get(self, iid: Any) -> Instance:
        instance = self.table.get(iid) if isinstance(iid, int) else None
        if instance is None:
            raise CallError(f"no plugin instance #{iid}")  # Kong matches "no plugin instance"
        return instance

    def close(self, args: list[Any]) -> dict[str, Any]:
        instance = self.get(args[0] if args else None)
        del self.table[instance.id]
        self.last_close = time.time()
        return {"Name": instance.name, "Id": instance.id, "Config": instance.config}

    def status(self) -> dict[str, Any]:
        plugin = self.plugin
        return {
            "Pid": os.getpid(),
            "Plugins": {
                plugin.name: {
                    "Name": plugin.name,
                    "Modtime": plugin.mtime,
                    "LoadTime": plugin.load_time,
                    "Instances": [instance.status() for instance in self.table.values()],
                    "LastStartInstance": self.last_start,
                    "LastCloseInstance": self.last_close,
                }
            },
        }


def event_target(args: list[Any]) -> tuple[Any, str]:
    """``HandleEvent``'s instance id and phase name."""
    request = first_map(args, "HandleEvent")
    return request.get("InstanceId"), str(request.get("EventName"))


# Every Step Kong sends (mp_rpc.lua's get_step_method); StepError delivers an error, the rest a value.
STEP_METHODS = (
    "plugin.Step",
    "plugin.StepCredential",
    "plugin.StepConsumer",
    "plugin.StepMemoryStats",
    "plugin.StepRoute",
    "plugin.StepService",
    "plugin.StepMultiMap",
    "plugin.StepPlugin",
)
STEP_ERROR = "plugin.StepError"


def step_value(args: list[Any], is_error: bool) -> tuple[Any, tuple[Any, Any]]:
    """A Step's event id and what the waiting PDK call returns: ``(data, None)`` or ``(None, error)``."""
    step = first_map(args, "Step")
    data = step.get("Data")
    return step.get("EventId"), ((None, data) if is_error else (data, None))
