"""The node report's setting: an interval the thread cannot sleep is bounded, never the end of the report."""

from __future__ import annotations

import threading
import time

import pytest

from creditgate import node_report
from creditgate.core.config import RedisSettings
from creditgate.node_report import NodeReporter
from creditgate.store.redis_store import RedisStore


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
