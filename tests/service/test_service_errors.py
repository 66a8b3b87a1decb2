"""Failures as the API tells them: bad data in Redis is not an outage (500 data_invalid and a log line
naming the key, never a 503 that invites a retry), and an export that cannot start is a 503, not a
stream cut short. Against the running service and a real Redis, corrupted or stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis

from creditgate.core.config import RedisSettings
from creditgate.store.store import RedisStore
from tests.redis_servers import RedisServer
from tests.service.test_api import grant, problem, subscribed
from tests.service_support import READ_TOKEN, running_service

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)


def test_bad_data_in_redis_is_a_500_data_invalid_naming_the_key_in_the_log(
    settings: RedisSettings, store: RedisStore, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with running_service(settings) as api:
        subscribed(api, "acme")
        assert grant(api, "acme", 10, "first").status_code == 201
        state = store.keys.account("acme").state
        redis_client.hset(state, "balance", "ten")
        caplog.set_level(logging.ERROR, logger="creditgate.service")

        read = api.call("GET", "/v1/accounts/acme", token=READ_TOKEN)
        detail = str(problem(read, 500, "data_invalid")["detail"])
        assert "Retry-After" not in read.headers and "unavailable" not in detail
        assert "'acme'" in detail and "balance" in detail and "ten" not in detail  # where, not what
        problem(grant(api, "acme", 5, "second"), 500, "data_invalid")

        lines = [r.getMessage() for r in caplog.records if "bad data in Redis" in r.getMessage()]
        assert len(lines) == 2 and "GET /v1/accounts/acme" in lines[0]
        assert all("acme" in line and "balance" in line for line in lines)
        redis_client.hset(state, "balance", "10")
        assert api.call("GET", "/v1/accounts/acme").json()["balance"] == 10  # nothing was written

        ledger = store.keys.account("acme").ledger
        redis_client.delete(ledger)
        redis_client.set(ledger, "not a stream")  # a key of the wrong type: Redis's WRONGTYPE
        problem(api.call("GET", "/v1/accounts/acme/ledger", token=READ_TOKEN), 500, "data_invalid")


@pytest.mark.server
def test_an_export_that_cannot_start_is_a_503_and_not_a_stream_cut_short(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    settings = RedisSettings(host="127.0.0.1", port=server.port, connect_timeout=300, read_timeout=300)
    try:
        with running_service(settings) as api:
            subscribed(api, "acme")
            assert api.call("GET", "/v1/export").status_code == 200
            server.stop()
            for fmt in ("jsonl", "csv", "cloudevents-batch"):
                answer = api.call("GET", "/v1/export", params={"format": fmt})
                problem(answer, 503, "store_unavailable")
    finally:
        server.stop()
