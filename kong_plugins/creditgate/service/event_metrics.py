"""The event deliveries in /metrics: every attempt counted in Redis (store/events.py), so the counters
survive a restart and every service process reports the same figures, and the dead letters waiting."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from creditgate.service.state import Service
from creditgate.store import events as stored

EVENT_DELIVERIES = "credit_gate_event_deliveries"
DEAD_LETTERS = "credit_gate_event_dead_letters"


class DeliveryCollector(Collector):
    """One round trip a scrape: the counters' hash and the dead letters' length (HLEN)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        figures, waiting = stored.delivery_figures(self.service.admin.store)
        deliveries = CounterMetricFamily(
            EVENT_DELIVERIES,
            "Threshold event delivery attempts, by outcome (delivered, failed: an attempt, dead_lettered) "
            "and by who tried (dispatcher: the service's delivery thread, replay: an operator's replay)",
            labels=["outcome", "via"],
        )
        for (via, outcome), value in figures.items():
            deliveries.add_metric([outcome, via], value)
        yield deliveries
        yield GaugeMetricFamily(DEAD_LETTERS, "Dead letters waiting to be replayed or dropped", value=waiting)


def count_delivery(service: Service, outcome: str) -> None:
    """One attempt of the service's delivery thread, counted in Redis."""
    stored.count_delivery(service.admin.store, outcome)


__all__ = ["DEAD_LETTERS", "EVENT_DELIVERIES", "DeliveryCollector", "count_delivery"]
