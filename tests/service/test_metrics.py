"""/metrics over real HTTP, from the counters real charges left in Redis, parsed by prometheus_client."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from creditgate.core.config import RedisSettings
from creditgate.core.policy import ChargeRequest
from creditgate.store.store import RedisStore
from tests.service_support import READ_TOKEN, running_service


def test_a_scrape_reports_todays_requests_credits_and_refusals_by_route(
    settings: RedisSettings, store: RedisStore
) -> None:
    with running_service(settings) as api:
        api.call("POST", "/v1/plans", json={"name": "pro", "allowance": 10})
        api.call("PUT", "/v1/accounts/acme/subscription", json={"plan": "pro", "starts_at": 0})
        api.call("POST", "/v1/accounts/acme/grants", json={"amount": 5}, headers={"Idempotency-Key": "k"})
        now = int(time.time())
        for _ in range(3):
            assert store.charge(ChargeRequest("acme", 4, now=now, route="route:search")).allowed  # 12 of 15
        assert not store.charge(
            ChargeRequest("acme", 4, now=now, route="route:search")
        ).allowed  # 3 left: refused
        assert store.charge(ChargeRequest("acme", 1, now=now, route="route:chat")).allowed

        scrape = api.call("GET", "/metrics", token=READ_TOKEN)
        assert scrape.headers["content-type"].startswith("text/plain")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(scrape.text)
            for s in family.samples
        }
        search = ("route", "route:search")
        assert samples[("credit_gate_requests_total", (("outcome", "allowed"), search))] == 3
        assert samples[("credit_gate_requests_total", (("outcome", "refused"), search))] == 1
        assert samples[("credit_gate_credits_charged_total", (search,))] == 12
        assert samples[("credit_gate_credits_charged_total", (("route", "route:chat"),))] == 1
        assert samples[("credit_gate_balance_credits", ())] == 2
        reason = (("outcome", "refused"), ("reason", "insufficient_credit"), search)
        assert samples[("credit_gate_refusals_total", reason)] == 1


def test_the_grafana_dashboard_uses_only_metrics_the_service_exports(settings: RedisSettings) -> None:
    import json
    import re
    from pathlib import Path

    path = Path(__file__).parents[2] / "deploy" / "grafana" / "credit-gate.json"
    dashboard = json.loads(path.read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"credit_gate_[a-z_]+", target["expr"])
    }
    with running_service(settings) as api:
        scrape = api.call("GET", "/metrics", token=READ_TOKEN).text
    exported = {s.name for family in text_string_to_metric_families(scrape) for s in family.samples}
    exported |= {f.name for f in text_string_to_metric_families(scrape)}
    exported |= {f"{f.name}_total" for f in text_string_to_metric_families(scrape) if f.type == "counter"}
    assert used <= exported, used - exported
