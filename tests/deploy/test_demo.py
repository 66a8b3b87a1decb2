"""The demo data the `seed` service loads: valid, consistent with kong.yml, and harmless to load again.

The seed script is run for real, as the `seed` container runs it (``sh /demo/seed.sh`` with
``CREDIT_GATE_REDIS_URL``), against a real redis-server.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from creditgate.core.config import RedisSettings
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.ops.documents import load_plans
from creditgate.store.store import RedisStore
from tests.deploy.test_kong_yml import GATE, ROOT, compose, kong_yml

DEMO = ROOT / "deploy" / "demo"
SCHEMAS = ROOT / "schemas"


def schema(name: str) -> Any:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))


def check(document: Any, name: str) -> None:
    validator_class = jsonschema.validators.validator_for(schema(name))
    validator = validator_class(schema(name), format_checker=validator_class.FORMAT_CHECKER)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == [], errors


def account_rows() -> list[dict[str, str]]:
    with (DEMO / "accounts.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def subscription(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row's subscription as a subscription document (the columns are the document's fields)."""
    fields = ("account", "plan", "status", "starts_at", "anchor", "expires_at")
    return {name: row[name] for name in fields if row.get(name)}


def test_the_plans_are_valid_plan_documents() -> None:
    content = yaml.safe_load((DEMO / "plans.yaml").read_text(encoding="utf-8"))
    for plan in content["plans"]:
        check(plan, "plan")
    assert [p.name for p in load_plans(DEMO / "plans.yaml")] == ["starter", "pro"]


def test_every_account_row_is_a_valid_subscription_with_a_keyed_opening_balance() -> None:
    rows = account_rows()
    assert rows
    keys = [row["key"] for row in rows]
    for row in rows:
        check(subscription(row), "subscription")
        assert int(row["balance"]) > 0 and row["key"], "an opening balance is granted once, by its key"
    assert len(set(keys)) == len(keys)


def test_the_demo_data_matches_kong_yml() -> None:
    """Accounts are the consumers' usernames; every plan a route is sold in exists."""
    plans = {p.name for p in load_plans(DEMO / "plans.yaml")}
    consumers = {c["username"] for c in kong_yml().consumers}
    assert {row["account"] for row in account_rows()} == consumers
    assert {row["plan"] for row in account_rows()} <= plans
    for entry in kong_yml().plugins(GATE):
        assert entry.config["account_by"] == "consumer_username", entry.where
        assert set(entry.config.get("plans") or []) <= plans, entry.where


def test_the_seed_service_runs_the_script_from_the_mounted_demo_directory() -> None:
    seed = compose()["services"]["seed"]
    mounts = dict(m.rsplit(":", 2)[:2] for m in seed["volumes"])
    assert mounts["./deploy/demo"] == "/demo"
    assert seed["command"] == ["sh", "/demo/seed.sh"]
    assert seed["environment"]["CREDIT_GATE_REDIS_URL"] == "redis://redis:6379/0"
    assert seed["depends_on"]["redis"] == {"condition": "service_healthy"}


def run_seed(settings: RedisSettings) -> str:
    """deploy/demo/seed.sh exactly as the seed container runs it, with this test's Redis."""
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "CREDIT_GATE_REDIS_URL": f"redis://{settings.host}:{settings.port}/0",
        "COLUMNS": "120",
    }
    result = subprocess.run(
        ["/bin/sh", str(DEMO / "seed.sh")], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def seeded(settings: RedisSettings, store: RedisStore) -> RedisStore:
    run_seed(settings)
    return store


def test_the_seed_loads_the_plans_subscriptions_and_balances(seeded: RedisStore) -> None:
    for row in account_rows():
        state = seeded.account_state(row["account"])
        assert (state.plan, state.status, state.balance) == (row["plan"], row["status"], int(row["balance"]))


def test_seeding_again_grants_nothing_and_keeps_the_period_used(
    seeded: RedisStore, settings: RedisSettings
) -> None:
    admin = Admin(seeded)
    charged = seeded.charge(ChargeRequest("alice", 2, now=admin.now(), entitled=(), route="route:basic"))
    assert charged.allowed
    before = seeded.account_state("alice")
    output = run_seed(settings)
    after = seeded.account_state("alice")
    assert "0 credits granted" in output and "2 opening balance(s) already imported" in output
    assert (after.balance, after.used, after.starts_at, after.anchor) == (
        before.balance,
        before.used,
        before.starts_at,
        before.anchor,
    )
    grants = [e for e in admin.ledger("alice", limit=100) if e.fields.get("kind") == "grant"]
    assert len(grants) == 1
