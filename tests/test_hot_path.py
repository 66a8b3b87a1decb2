"""The charge's own path to Redis under gevent: every reply goes to the request that sent its command.

Concurrent charges share one pipelined connection, and the event loop writes for them; a reply
handed to the wrong request would charge the wrong account or answer the wrong client. The
commands here are large enough that the kernel takes them in parts, so the writes wait for room.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.redis_servers import RedisServer

PROGRAM = """
import json, sys
from gevent import monkey

monkey.patch_all()
import gevent
import redis
from creditgate.core.redis_settings import RedisSettings
from creditgate.store.hot_path import HotPath

port, count = int(sys.argv[1]), int(sys.argv[2])
sha = redis.Redis(port=port).script_load("return {ARGV[1], string.len(ARGV[2])}")
hot = HotPath(RedisSettings(host="127.0.0.1", port=port, read_timeout=10_000), sha, lambda: sha)

def size(i):
    return i * 40_993 % 400_000

def charge(i):
    return hot.evalsha([], [f"request-{i}", "x" * size(i)]) == [f"request-{i}", size(i)]

done = gevent.joinall([gevent.spawn(charge, i) for i in range(count)], raise_error=True)
print(json.dumps({"right": sum(g.value for g in done), "pipelined": hot._pipeline is not None}))
"""


def test_concurrent_charges_each_get_their_own_reply_when_writes_wait_for_room(
    redis_server: RedisServer,
) -> None:
    count = 300  # about 60 MB of commands in flight: far more than the sockets' buffers
    run = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(redis_server.port), str(count)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"right": count, "pipelined": True}
