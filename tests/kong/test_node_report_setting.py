"""The node report's thread: an interval it cannot wait is bounded, it ends with its store, and each store
of a process reports on its own."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import redis

from creditgate.core.config import RedisSettings
from creditgate.kong import node_report
from creditgate.kong.node_report import NodeReporter
from creditgate.service.metrics import NodeCollector
from creditgate.store.breaker import CircuitBreaker
from creditgate.store.keys import node_key, nodes_key
from creditgate.store.store import RedisStore


@pytest.mark.parametrize("value", ["inf", "1e300"])
def test_an_interval_too_long_to_sleep_is_refused_or_bounded(
    monkeypatch: pytest.MonkeyPatch, store: RedisStore, value: str
) -> None:
    monkeypatch.setenv(node_report.INTERVAL_ENV, value)
    died: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    reporter = NodeReporter(store, node_report.interval_from_env(), node="attack")
    reporter.start()
    time.sleep(0.3)
    reporter.stop()
    assert died == []


def test_the_report_thread_ends_as_soon_as_its_store_closes(settings: RedisSettings) -> None:
    store = RedisStore.from_settings(settings)
    reporter = NodeReporter(store, node_report.MAX_INTERVAL)
    store.reporter = reporter
    reporter.start()
    assert reporter._thread is not None and reporter._thread.is_alive()
    store.close()
    reporter._thread.join(2)
    assert not reporter._thread.is_alive(), "the thread slept on after its store closed"


def test_stores_of_one_prefix_in_one_process_each_report_their_own_breaker_and_errors(
    settings: RedisSettings, redis_client: redis.Redis
) -> None:
    # Instances with other Redis or breaker settings get stores of their own (kong/stores.py),
    # on the same Redis and prefix: each store's breaker and errors must reach the scrape.
    tripped = RedisStore.from_settings(settings, breaker=CircuitBreaker(1, 10_000))
    healthy = RedisStore.from_settings(
        RedisSettings(port=settings.port, read_timeout=settings.read_timeout + 1),
        breaker=CircuitBreaker(3, 10_000),
    )
    assert tripped.breaker is not None
    tripped.breaker.failed()
    tripped.redis_errors.count(redis.exceptions.TimeoutError())
    tripped.redis_errors.count(redis.exceptions.TimeoutError())
    for store in (tripped, healthy):
        NodeReporter(store, 10).write()
    prefix = tripped.keys.prefix
    reports = []
    for node in redis_client.smembers(nodes_key(prefix)):
        name = node.decode() if isinstance(node, bytes) else node
        report = redis_client.hgetall(node_key(prefix, name))
        reports.append((report[b"breaker"], report[b"errors:timeout"]))
    reports.sort()
    assert reports == [(b"closed", b"0"), (b"open", b"2")]
    scraped = NodeCollector(SimpleNamespace(admin=SimpleNamespace(store=healthy)))  # type: ignore[arg-type]
    breaker_open = next(family for family in scraped.collect() if family.name == "credit_gate_breaker_open")
    assert sorted(sample.value for sample in breaker_open.samples) == [0, 1]
    tripped.close()
    healthy.close()
