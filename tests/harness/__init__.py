"""Kong's side of the external-plugin protocol, played against the real kong-pdk plugin server.

Kong cannot run in the test environment, so the tests start the real plugin server process and talk to
its real unix socket exactly as Kong's Lua code does, one module per concern:

* :mod:`tests.harness.wire`: MessagePack-RPC, one keepalive-pooled connection borrowed per call;
* :mod:`tests.harness.process`: the server process, and its respawn by Kong's worker 0;
* :mod:`tests.harness.config`: plugin entities and Kong's schema processing of their config;
* :mod:`tests.harness.pdk`: the simulated request and the PDK functions a plugin calls;
* :mod:`tests.harness.worker`: one nginx worker (:class:`KongSide`): its instance table, its pool, events;
* :mod:`tests.harness.node`: a whole node (:class:`KongNode`): many workers, the reset worker event,
  kills and respawns, configuration changes;
* :mod:`tests.harness.versions`: what differs between Kong 3.4, 3.6 and 3.9, each rule cited.

Any failure Kong would answer by proxying the request WITHOUT the plugin raises :class:`KongWouldBypass`,
so that a test can never mistake it for success.
"""

from tests.harness.config import PluginConfig, fill_schema
from tests.harness.node import KongNode, NodeResult, NodeWorker
from tests.harness.pdk import (
    HeaderInput,
    Headers,
    KongRequest,
    LogLine,
    Outcome,
    PdkCall,
    RequestRun,
    cjson_encode,
    fix_mmap,
    lua_roundtrip,
)
from tests.harness.process import PluginInfo, PluginServerProcess, PluginServerStartError, Respawner, dump
from tests.harness.versions import KONG_VERSIONS, RESET_SCOPE, RULES, KongRules, rules_for
from tests.harness.wire import DEFAULT_POOL_SIZE, DEFAULT_READ_TIMEOUT, KongRpcError, KongRpcTimeout
from tests.harness.worker import KongSide, KongWouldBypass, StartedInstance

__all__ = [
    "DEFAULT_POOL_SIZE",
    "DEFAULT_READ_TIMEOUT",
    "KONG_VERSIONS",
    "RESET_SCOPE",
    "RULES",
    "HeaderInput",
    "Headers",
    "KongNode",
    "KongRequest",
    "KongRpcError",
    "KongRpcTimeout",
    "KongRules",
    "KongSide",
    "KongWouldBypass",
    "LogLine",
    "NodeResult",
    "NodeWorker",
    "Outcome",
    "PdkCall",
    "PluginConfig",
    "PluginInfo",
    "PluginServerProcess",
    "PluginServerStartError",
    "RequestRun",
    "Respawner",
    "StartedInstance",
    "cjson_encode",
    "dump",
    "fill_schema",
    "fix_mmap",
    "lua_roundtrip",
    "rules_for",
]
