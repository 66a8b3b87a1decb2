"""Fixtures for the end-to-end tests that run the plugin server with ``--log-phase``, so that a request's
log phase can refund or settle what its access phase charged, in each of kong-pdk's concurrency modes.

A test module imports the ``settling_*`` fixtures (with ``# noqa: F401``: no test names them) for pytest
to find them; ``settling_kong`` takes the place of conftest's ``kong`` there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.ops.admin import Admin
from tests.gate_fixtures import MODES, PLUGIN_SERVER, start_plugin_server
from tests.harness import KongSide, PluginInfo, PluginServerProcess

ACME = {"id": "acme", "username": "acme", "custom_id": None, "tags": None}


@pytest.fixture(scope="module")
def settling_info() -> PluginInfo:
    return PluginInfo.query([*PLUGIN_SERVER, "--log-phase"])


@pytest.fixture(scope="module", params=sorted(MODES))
def settling_server(request: pytest.FixtureRequest) -> Iterator[PluginServerProcess]:
    server = start_plugin_server("--log-phase", *MODES[request.param])
    yield server
    server.stop()


# Imported as ``settling_kong`` and named ``kong`` for pytest, so that the tests' ``kong`` parameters do
# not shadow an imported name.
@pytest.fixture(name="kong")
def settling_kong(settling_server: PluginServerProcess, settling_info: PluginInfo) -> Iterator[KongSide]:
    with KongSide(settling_server.socket_path, settling_info, timeout=10.0) as side:
        yield side


def prepaid_acme(admin: Admin) -> Admin:
    """acme on a prepaid plan with 100 credits and no allowance."""
    admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=0, prepaid=True))
    admin.subscribe("acme", "pro", starts_at=admin.now() - 60)
    admin.grant("acme", 100)
    return admin
