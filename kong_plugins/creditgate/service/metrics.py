"""/metrics for Prometheus, read from the counters the charge script already keeps (no hot-path cost).

The charge and settle scripts count per account, route and UTC day (``<route>|requests``,
``|credits``, ``|refused``, ``|refunded``, ...), and add each count to the day's totals over every
account (store/totals.py). A scrape reads today's totals, by route: the counters therefore start again
at 00:00 UTC, which Prometheus reads as a counter reset (``rate`` and ``increase`` stay right). A scrape
reads one hash (on a Cluster, today's hash of each slot) and the number of accounts, whatever the number
of accounts. The prepaid balance held by all accounts is added up in the background, 500 accounts a
read, at most once a minute (``credit_gate_balance_age_seconds`` says how old it is).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from creditgate.core.periods import DAY_SECONDS
from creditgate.ops.admin import USAGE_FIELDS
from creditgate.service import event_metrics
from creditgate.service.routes import READ
from creditgate.service.state import Service, reader
from creditgate.store.nodes import CAUSES
from creditgate.store.reports import account_count, account_page, balances
from creditgate.store.totals import Totals

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH = 500

# What the service itself does: webhooks received, by source and outcome.
WEBHOOK_EVENTS = "credit_gate_webhook_events"
EVENT_DELIVERIES = event_metrics.EVENT_DELIVERIES  # and the dead letters waiting: service/event_metrics.py
# The charge script also counts each refusal by reason: "<route>|refused:<reason>" (see _lib.lua).
REASONED = ("refused", "shadow_refused")


BALANCE_EVERY = 60.0  # seconds between two sums of every account's balance
BALANCE_AT_ONCE = 5_000  # up to this many accounts, the first scrape adds the balances up itself


class Balances:
    """Every account's prepaid balance added up in a thread of its own, at most every ``BALANCE_EVERY``
    seconds, so that a scrape never waits for it: a scrape starts the next sum when the last is old."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.lock = threading.Lock()
        self.total: int | None = None
        self.at = 0.0
        self.running = False

    def read(self, accounts: int) -> tuple[int | None, float]:
        if self.total is None and accounts <= BALANCE_AT_ONCE:
            with self.lock:
                self.running = True
            self._sum()
        with self.lock:
            if not self.running and time.monotonic() - self.at >= BALANCE_EVERY:
                self.running = True
                threading.Thread(target=self._sum, name="credit-gate-balances", daemon=True).start()
            return self.total, time.monotonic() - self.at

    def _sum(self) -> None:
        try:
            store = self.service.admin.store
            total, cursor, seen = 0, None, set()
            while cursor != 0:  # the accounts a page at a time (SSCAN): SMEMBERS of 100,000 holds Redis 30 ms
                cursor, page = account_page(store, cursor or 0, BATCH)
                names = [name for name in page if name not in seen]  # SSCAN may give one twice
                seen.update(names)
                total += balances(store, names)
                time.sleep(0.001)  # between two reads, the service's requests go first
            with self.lock:
                self.total, self.at = total, time.monotonic()
        except Exception:
            log.warning("credit-gate: the balances' sum for /metrics failed", exc_info=True)
        finally:
            with self.lock:
                self.running = False


class UsageCollector(Collector):
    def __init__(self, service: Service) -> None:
        self.service = service
        self.balances = Balances(service)

    def collect(self) -> Iterator[Metric]:
        admin = self.service.admin
        now = admin.now()
        today = now - now % DAY_SECONDS
        store = admin.store
        day_totals = Totals(store)
        (counters,) = day_totals.counters(day_totals.days([today], now, ranked=False))
        totals: dict[tuple[str, str], int] = {}
        for name, value in counters.items():
            where, _, field = name.rpartition("|")
            if field in USAGE_FIELDS or field.partition(":")[0] in REASONED:
                totals[(where, field)] = totals.get((where, field), 0) + value
        requests = CounterMetricFamily(
            "credit_gate_requests",
            "Requests the gate decided today (UTC), by route and outcome",
            labels=["route", "outcome"],
        )
        charged = CounterMetricFamily(
            "credit_gate_credits_charged", "Credits charged today (UTC)", labels=["route"]
        )
        refunded = CounterMetricFamily(
            "credit_gate_credits_refunded",
            "Credits given back today (UTC): refunds and settlements",
            labels=["route"],
        )
        refusals = CounterMetricFamily(
            "credit_gate_refusals",
            "Requests refused today (UTC), by route, reason (the 402 body's code) and outcome",
            labels=["route", "reason", "outcome"],
        )
        outcomes = {
            "requests": "allowed",
            "refused": "refused",
            "replayed": "replayed",
            "shadow_allowed": "shadow_allowed",
            "shadow_refused": "shadow_refused",
        }
        for (route, field), value in sorted(totals.items()):
            if field in outcomes:
                requests.add_metric([route, outcomes[field]], value)
            elif field == "credits":
                charged.add_metric([route], value)
            elif field.partition(":")[0] in REASONED:
                outcome, _, reason = field.partition(":")
                refusals.add_metric([route, reason, outcome], value)
        refunds: dict[str, int] = {}
        for (route, field), value in totals.items():
            if field in ("refunded", "settled_back"):
                refunds[route] = refunds.get(route, 0) + value
        for route, value in sorted(refunds.items()):
            refunded.add_metric([route], value)
        yield requests
        yield refusals
        yield charged
        yield refunded
        accounts = account_count(store)
        yield GaugeMetricFamily("credit_gate_accounts", "Accounts the operators created", value=accounts)
        balance, age = self.balances.read(accounts)
        if balance is not None:
            yield GaugeMetricFamily(
                "credit_gate_balance_credits",
                "Prepaid credits held by all accounts, as last added up (see ..._balance_age_seconds)",
                value=balance,
            )
            yield GaugeMetricFamily(
                "credit_gate_balance_age_seconds", "How old credit_gate_balance_credits is", value=age
            )


class NodeCollector(Collector):
    """What each plugin server published (kong/node_report.py): its breaker and the Redis errors it met.

    A node whose report expired (stopped, or unable to write for a few intervals) drops out of the
    scrape and out of the set of nodes.
    """

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        reports = self.service.admin.store.node_reports()
        breaker_open = GaugeMetricFamily(
            "credit_gate_breaker_open",
            "1 while a plugin server's circuit to Redis is open or half-open, by node",
            labels=["node"],
        )
        changes = CounterMetricFamily(
            "credit_gate_breaker_changes", "Circuit breaker state changes, by node", labels=["node"]
        )
        errors = CounterMetricFamily(
            "credit_gate_redis_errors",
            "Redis calls a plugin server could not complete, by node and cause (timeout, connection, "
            "readonly, oom, misconf, loading, busy, masterdown, other)",
            labels=["node", "cause"],
        )
        voids = CounterMetricFamily(
            "credit_gate_charge_voids",
            "Charges whose reply never reached the plugin server, by node and outcome (voided: it never "
            "charges; given_back: it had charged and was refunded; gave_up: not voided within 300 s)",
            labels=["node", "outcome"],
        )
        voids_pending = GaugeMetricFamily(
            "credit_gate_charge_voids_pending",
            "Voids a plugin server is still trying, by node",
            labels=["node"],
        )
        age = GaugeMetricFamily(
            "credit_gate_node_report_age_seconds",
            "Seconds since a plugin server last wrote its report, by node",
            labels=["node"],
        )
        now = time.time()
        for node, fields in reports.items():
            breaker_open.add_metric([node], 0 if fields.get("breaker") in ("closed", "off") else 1)
            changes.add_metric([node], _number(fields.get("breaker_changes")))
            for cause in CAUSES:
                errors.add_metric([node, cause], _number(fields.get(f"errors:{cause}")))
            for outcome in ("voided", "given_back", "gave_up"):
                voids.add_metric([node, outcome], _number(fields.get(f"voids:{outcome}")))
            voids_pending.add_metric([node], _number(fields.get("voids:pending")))
            age.add_metric([node], max(0.0, now - _number(fields.get("written_at"))))
        yield breaker_open
        yield changes
        yield errors
        yield voids
        yield voids_pending
        yield age


def _number(value: str | None) -> float:
    try:
        return float(value) if value is not None else 0.0
    except ValueError:
        return 0.0


def registry_for(service: Service) -> CollectorRegistry:
    registry: Any = service.extra.get("registry")
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(UsageCollector(service))
        registry.register(NodeCollector(service))
        service.extra["webhook_events"] = Counter(
            WEBHOOK_EVENTS,
            "Webhook events received, by source and outcome",
            ["source", "outcome"],
            registry=registry,
        )
        registry.register(event_metrics.DeliveryCollector(service))  # kept in Redis: they survive a restart
        service.extra["registry"] = registry
    assert isinstance(registry, CollectorRegistry)
    return registry


def count_webhook(service: Service, source: str, outcome: str) -> None:
    registry_for(service)
    service.extra["webhook_events"].labels(source, outcome).inc()


def count_delivery(service: Service, outcome: str) -> None:
    event_metrics.count_delivery(service, outcome)


router = APIRouter(tags=["service"])


@router.get("/metrics", response_class=Response, responses={**READ, 200: {"content": {"text/plain": {}}}})
def metrics(service: Service = Depends(reader)) -> Response:  # noqa: B008
    """Prometheus text format; the read-only token is enough."""
    return Response(generate_latest(registry_for(service)), media_type=CONTENT_TYPE)
