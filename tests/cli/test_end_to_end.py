"""A charge made through the real plugin server (driven by Kong's protocol) as the operator sees it:
in `balance`, in `usage` and in the ledger export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from creditgate.core.config import RedisSettings
from tests.cli_support import Cli
from tests.gate_fixtures import through_gate
from tests.harness import KongRequest, KongSide

ACME: dict[str, Any] = {"id": "0b8f5c6e-acme", "username": "acme", "custom_id": None, "tags": None}


def test_a_charge_through_the_plugin_shows_in_balance_usage_and_export(
    kong: KongSide, settings: RedisSettings, tmp_path: Path
) -> None:
    cli = Cli(settings)
    plans = tmp_path / "plans.yaml"
    plans.write_text("name: pro\nperiod: month\nallowance: 2\nprepaid: true\n")
    cli.ok("plans", "apply", str(plans))
    cli.ok("subscribe", ACME["id"], "pro")
    cli.ok("grant", ACME["id"], "10", "--key", "in_1")

    outcome = through_gate(kong, settings, KongRequest(path="/v1/answer", consumer=ACME), cost=3)
    assert outcome.proxied
    charge_id = outcome.upstream_headers.get("X-Credit-Charge-Id")

    shown = cli.json("balance", ACME["id"])
    assert shown["balance"] == 9
    assert (shown["period"]["used"], shown["period"]["remaining"]) == (2, 0)

    (row,) = cli.json("usage", "--account", ACME["id"])
    assert (row["route"], row["requests"], row["credits"], row["refused"]) == ("route:route-1", 1, 3, 0)

    exported = [json.loads(line) for line in cli.ok("export", "--account", ACME["id"]).stdout.splitlines()]
    charge = exported[-1]
    assert (charge["kind"], charge["amount"], charge["balance"], charge["cost"]) == ("charge", -1, 9, 3)
    assert charge["route"] == "route:route-1"
    assert charge["ledger_id"] == charge_id
    assert [e["kind"] for e in exported] == ["grant", "period_reset", "charge"]
    (check,) = cli.json("verify", ACME["id"])
    assert check["ok"] is True
