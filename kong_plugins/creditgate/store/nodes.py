"""The node reports in Redis: what only a plugin server knows, published for the service's /metrics.

Each store counts its Redis errors by cause (``RedisErrors``) where a failure is already handled,
nothing on the success path; kong/node_report.py's thread writes them, with the breaker's state, to

    <prefix>:{nodes}:node:<node id>   hash: breaker state, state changes, errors by cause, written at
                                      (Unix seconds); expires after a few intervals
    <prefix>:{nodes}:nodes            set: the node ids that reported (a read drops expired ones)

and the service reads every node's report back (``RedisStore.node_reports``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import redis

from creditgate.store.keys import node_key, nodes_key
from creditgate.store.replies import WRITE_FAULTS, as_text, write_fault

# Unreachable (timeout, connection), refusing writes (one per code of replies.py's WRITE_FAULTS,
# lower case), and the rest.
CAUSES = ("timeout", "connection", *(code.lower() for code in WRITE_FAULTS), "other")


class RedisErrors:
    """Redis failures by cause. Plain increments: a lost one under a race costs one count, no lock."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(CAUSES, 0)

    def count(self, error: BaseException) -> None:
        code = write_fault(error)
        if code is not None:
            cause = code.lower()
        elif isinstance(error, redis.exceptions.TimeoutError):
            cause = "timeout"
        elif isinstance(error, redis.exceptions.ConnectionError):
            cause = "connection"
        else:
            cause = "other"
        self.counts[cause] += 1


class Reporter(Protocol):
    """What publishes a store's report (kong/node_report.py): stopped when the store closes."""

    def stop(self) -> None: ...


def write_report(
    client: Any, prefix: str, node: str, fields: Mapping[str, str | int | float], ttl_seconds: int
) -> None:
    """Replace ``node``'s report, to expire after ``ttl_seconds``, and list the node: one round trip."""
    key = node_key(prefix, node)
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping=dict(fields))
    pipe.expire(key, ttl_seconds)
    pipe.sadd(nodes_key(prefix), node)
    pipe.execute()


def read_reports(client: Any, prefix: str) -> dict[str, dict[str, str]]:
    """Every listed node's report by node id, in node order; a node whose report expired is unlisted."""
    nodes = sorted(as_text(n) for n in client.smembers(nodes_key(prefix)))
    reports: dict[str, dict[str, str]] = {}
    gone: list[str] = []
    for node in nodes:
        raw = client.hgetall(node_key(prefix, node))
        if raw:
            reports[node] = {as_text(k): as_text(v) for k, v in raw.items()}
        else:
            gone.append(node)
    if gone:
        client.srem(nodes_key(prefix), *gone)
    return reports
