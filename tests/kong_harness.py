"""The names the suite imports from the harness, now the package :mod:`tests.kong` (read its docstring)."""

from tests.kong import (
    DEFAULT_READ_TIMEOUT,
    RESET_SCOPE,
    Headers,
    KongRequest,
    KongRpcError,
    KongRpcTimeout,
    KongSide,
    KongWouldBypass,
    LogLine,
    Outcome,
    PdkCall,
    PluginConfig,
    PluginInfo,
    PluginServerProcess,
    PluginServerStartError,
    RequestRun,
    StartedInstance,
    cjson_encode,
    dump,
    fill_schema,
    fix_mmap,
    lua_roundtrip,
)
from tests.kong.pdk import STEP_METHOD as _STEP_METHOD
from tests.kong.pdk import EventEnded as _EventEnded
from tests.kong.pdk import HeaderInput
from tests.kong.pdk import LuaError as _LuaError
from tests.kong.wire import ConnectionPool as _ConnectionPool
from tests.kong.wire import idle_connection_alive as _idle_connection_alive
from tests.kong.worker import BypassError as _BypassError
from tests.kong.worker import InstanceInfo as _InstanceInfo

__all__ = [
    "DEFAULT_READ_TIMEOUT",
    "RESET_SCOPE",
    "_STEP_METHOD",
    "HeaderInput",
    "Headers",
    "KongRequest",
    "KongRpcError",
    "KongRpcTimeout",
    "KongSide",
    "KongWouldBypass",
    "LogLine",
    "Outcome",
    "PdkCall",
    "PluginConfig",
    "PluginInfo",
    "PluginServerProcess",
    "PluginServerStartError",
    "RequestRun",
    "StartedInstance",
    "_BypassError",
    "_ConnectionPool",
    "_EventEnded",
    "_InstanceInfo",
    "_LuaError",
    "_idle_connection_alive",
    "cjson_encode",
    "dump",
    "fill_schema",
    "fix_mmap",
    "lua_roundtrip",
]
