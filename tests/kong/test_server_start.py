"""What the plugin server does between Kong's ``exec`` and its first answer.

Until the server listens, Kong's calls fail to connect: Kong 3.9.1 runs those requests without the
plugin, or answers 500 where its worker must start an instance first (docs/fail-closed.md). So a
single server process listens before it imports what it runs on, and the start itself is kept short.
How long it takes is measured by ``python -m bench startup`` (instruction counts with
``--instructions``), not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from creditgate.core.config import RedisSettings
from tests.gate_fixtures import PLUGIN_SERVER, gate_config, short_dir
from tests.harness import KongRequest, KongSide, PluginInfo, PluginServerProcess

pytestmark = pytest.mark.server  # its tests start plugin servers and Python processes

HEAVY = ("gevent", "kong_pdk", "redis")
# The console script's own code, run with an audit hook that says what was imported when the socket
# was bound (``socket.bind`` is an audit event): the same main() Kong's start command runs.
WITH_BIND_REPORT = textwrap.dedent(
    """
    import sys

    def report(event, args):
        if event == "socket.bind" and str(args[1]).endswith("credit-gate.sock"):
            loaded = sorted(name for name in {heavy!r} if name in sys.modules)
            print("bound with " + ",".join(loaded), file=sys.stderr, flush=True)

    sys.addaudithook(report)
    from credit_gate import main

    main()
    """
).format(heavy=HEAVY, server=PLUGIN_SERVER[0])


@pytest.fixture(
    params=[(), ("--runtime", "kong-pdk"), ("--runtime", "kong-pdk", "-g")],
    ids=["credit-gate", "kong-pdk-threads", "kong-pdk-gevent"],
)
def started(request: pytest.FixtureRequest) -> Iterator[PluginServerProcess]:
    prefix = short_dir()
    script = prefix / "credit-gate-pluginserver"  # a file: kong-pdk reads its __main__'s path
    script.write_text(WITH_BIND_REPORT)
    server = PluginServerProcess(
        [sys.executable, str(script), *request.param, "--processes", "1"],
        prefix=prefix,
        socket_name="credit-gate.sock",
    )
    try:
        yield server
    finally:
        server.stop()


def test_a_single_server_process_listens_before_it_imports_gevent_kong_pdk_or_redis(
    started: PluginServerProcess,
) -> None:
    bound = [line for line in started.log_text().splitlines() if line.startswith("bound with")]
    assert bound == ["bound with "]


def test_kong_s_first_calls_on_a_server_that_just_listens_are_answered(
    started: PluginServerProcess, settings: RedisSettings
) -> None:
    # The harness waited only until the socket accepted; the instance and the event come next.
    info = PluginInfo.query(PLUGIN_SERVER)
    with KongSide(started.socket_path, info, timeout=30.0) as kong:
        outcome = kong.request(gate_config(settings), KongRequest())
    assert outcome.status == 401  # no consumer: the plugin itself answered
    assert outcome.instance_calls == ["plugin.StartInstance"]


PATCH_COUNTS = textwrap.dedent(
    """
    import json
    from importlib import metadata

    import gevent.monkey
    import zope.event

    counts = {"entry point readings": 0, "gevent's plugin": 0, "events": 0}
    read = metadata.entry_points

    def counted_read(*args, **kwargs):
        counts["entry point readings"] += 1
        return read(*args, **kwargs)

    metadata.entry_points = counted_read
    plugin = gevent.monkey._subscribe_signal_os  # gevent's own entry point (its entry_points.txt)

    def counted_plugin(event):
        counts["gevent's plugin"] += 1
        return plugin(event)

    gevent.monkey._subscribe_signal_os = counted_plugin
    zope.event.subscribers.append(lambda event: counts.__setitem__("events", counts["events"] + 1))
    {patch}
    import socket

    import gevent.socket

    counts["socket patched"] = socket.socket is gevent.socket.socket
    print(json.dumps(counts))
    """
)


def _patch_counts(patch: str) -> dict[str, object]:
    code = PATCH_COUNTS.replace("{patch}", patch)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    counts: dict[str, object] = json.loads(out.stdout)
    return counts


def test_patching_for_gevent_reads_the_entry_points_once_and_tells_gevent_s_listeners_as_gevent_does() -> (
    None
):
    ours = _patch_counts("from creditgate.kong import runtime; runtime.patch_for_gevent()")
    gevent_s = _patch_counts("gevent.monkey.patch_all()")
    assert ours["entry point readings"] == 1
    assert gevent_s["entry point readings"] == gevent_s["events"]  # once per event: 25 in gevent 26.9
    assert {k: v for k, v in ours.items() if k != "entry point readings"} == {
        k: v for k, v in gevent_s.items() if k != "entry point readings"
    }
    assert ours["gevent's plugin"] == 1 and ours["socket patched"] is True
