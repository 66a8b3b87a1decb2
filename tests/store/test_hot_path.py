"""The charge's own path to Redis under gevent: every reply goes to the request that sent its command.

Concurrent charges share one pipelined connection, and the event loop writes for them once per
turn; a reply handed to the wrong request would charge the wrong account or answer the wrong client.
The commands here are large enough that the kernel takes them in parts, so the writes wait for room.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redis_servers import RedisServer

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

# What every program starts with: gevent first, as the plugin server does, then the hot path.
GEVENT_HOT_PATH = """
import json, os, signal, sys, time
from gevent import monkey

monkey.patch_all()
import gevent
import redis
from creditgate.core.redis_settings import RedisSettings
from creditgate.store.hot_path import HotPath

def hot_path(port, script, read_timeout):  # the charge's path, for one script loaded first
    sha = redis.Redis(port=port).script_load(script)
    settings = RedisSettings(host="127.0.0.1", port=port, read_timeout=read_timeout)
    return HotPath(settings, sha, lambda: sha)
"""

PROGRAM = (
    GEVENT_HOT_PATH
    + """
port, count = int(sys.argv[1]), int(sys.argv[2])
hot = hot_path(port, "return {ARGV[1], string.len(ARGV[2])}", 10_000)

def size(i):
    return i * 40_993 % 400_000

def charge(i):
    return hot.evalsha([], [f"request-{i}", "x" * size(i)]) == [f"request-{i}", size(i)]

done = gevent.joinall([gevent.spawn(charge, i) for i in range(count)], raise_error=True)
print(json.dumps({"right": sum(g.value for g in done), "pipelined": hot._pipeline is not None}))
"""
)


def run_program(program: str, *args: object) -> dict[str, object]:
    run = subprocess.run(
        [sys.executable, "-c", program, *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    outcome: dict[str, object] = json.loads(run.stdout)
    return outcome


def test_concurrent_charges_each_get_their_own_reply_when_writes_wait_for_room(
    redis_server: RedisServer,
) -> None:
    count = 300  # about 60 MB of commands in flight: far more than the sockets' buffers
    assert run_program(PROGRAM, redis_server.port, count) == {"right": count, "pipelined": True}


PAUSE_PROGRAM = (
    GEVENT_HOT_PATH
    + """
port, redis_pid = int(sys.argv[1]), int(sys.argv[2])
hot = hot_path(port, "return ARGV[1]", 300)

def call(tag):
    try:
        return hot.evalsha([], [tag]) == tag
    except redis.exceptions.TimeoutError:
        return "timeout"

assert hot.evalsha([], ["warm"]) == "warm"
os.kill(redis_pid, signal.SIGSTOP)
try:
    late = gevent.joinall([gevent.spawn(call, f"late-{i}") for i in range(20)], raise_error=True)
finally:
    os.kill(redis_pid, signal.SIGCONT)  # within twice the read timeout: the connection is kept
after = gevent.joinall([gevent.spawn(call, f"after-{i}") for i in range(20)], raise_error=True)
print(json.dumps({"late": [g.value for g in late], "after": [g.value for g in after]}))
"""
)


def test_replies_that_come_after_their_requests_gave_up_do_not_go_to_the_next_requests(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis").start()  # its own: it is paused
    assert server.process is not None
    try:
        outcome = run_program(PAUSE_PROGRAM, server.port, server.process.pid)
    finally:
        server.stop()
    assert outcome["late"] == ["timeout"] * 20  # Redis paused: each gave up after the read timeout
    assert outcome["after"] == [True] * 20  # the late replies were dropped, not handed on


BATCH_PROGRAM = (
    GEVENT_HOT_PATH
    + """
port, count = int(sys.argv[1]), int(sys.argv[2])
admin = redis.Redis(port=port)
hot = hot_path(port, "return ARGV[1]", 10_000)
assert hot.evalsha([], ["open"]) == "open"  # the connection is open before Redis's count is read

def reads():
    return admin.info("stats")["total_reads_processed"]

def charge(tag):
    return hot.evalsha([], [tag]) == tag

before = reads()
alone = charge("alone")
after_alone = reads()
# Spawned together, the greenlets all run in the same turn of the event loop.
batch = gevent.joinall([gevent.spawn(charge, f"batch-{i}") for i in range(count)], raise_error=True)
after_batch = reads()
print(json.dumps({
    "alone": [alone, after_alone - before - 1],  # minus the INFO that read the count
    "batch": [sum(g.value for g in batch), after_batch - after_alone - 1],
}))
"""
)


def test_charges_made_in_one_turn_of_the_event_loop_share_one_write(redis_server: RedisServer) -> None:
    outcome = run_program(BATCH_PROGRAM, redis_server.port, 50)
    assert outcome["alone"] == [True, 1]
    assert outcome["batch"] == [50, 1]  # Redis read the 50 charges in one go
