"""An empty array in the config as some of Kong's encoders send it, ``{}``, through Kong's protocol.

Kong's plugin server client JSON-encodes the config for ``plugin.StartInstance``; lua-cjson writes an
empty Lua table as ``{}`` unless the table is marked as an array. Such a config must work as ``[]``.
"""

from __future__ import annotations

from typing import Any

from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.gate_fixtures import through_gate
from tests.harness import KongRequest, KongSide

ACCOUNT = "0b8f5c6e-acme"
ACME: dict[str, Any] = {"id": ACCOUNT, "username": "acme", "custom_id": None, "tags": None}


def test_a_config_whose_empty_arrays_arrive_as_empty_objects_charges_as_with_empty_lists(
    kong: KongSide, settings: RedisSettings, admin: Admin, store: RedisStore
) -> None:
    admin.apply_plan(Plan("pro", period=Period.MONTH, allowance=0, prepaid=True))
    admin.subscribe(ACCOUNT, "pro", starts_at=admin.now() - 60)
    admin.grant(ACCOUNT, 10, note="top-up")
    outcome = through_gate(
        kong,
        settings,
        KongRequest(method="GET", path="/v1/answer", consumer=ACME),
        cost=3,
        plans={},
        costs={},
        refund_statuses={},
        redis={"cluster_nodes": {}, "sentinel_nodes": {}},
    )
    assert outcome.proxied and outcome.client_status == 200
    assert store.account_state(ACCOUNT).balance == 7
