"""The node report's setting: an interval the thread cannot sleep is bounded, never the end of the report."""

from __future__ import annotations

import threading
import time

import pytest

from creditgate import node_report
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
