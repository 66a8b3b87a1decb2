"""``python -m bench ledger-verify``: how long one ledger verification holds Redis, before and after batching.

On a redis-server of its own (SLOWLOG set to log every command with its duration), one account's ledger
is filled with ``--entries`` entries (300,000 by default, the length issue 24 measured), then verified
two ways while another process charges another account, one charge at a time:

- **one MULTI** (before): the account's hash and ``XRANGE <ledger> - +`` in one transaction, as
  ``Admin.verify_ledger`` read it until issue 24;
- **batches** (after): ``creditgate.store.ledger_check.replay_ledger``, 1000 entries per command.

Per way: the longest single Redis command of the verification and the longest transaction (the sum of
the commands of one MULTI, from SLOWLOG, in microseconds of Redis time), the wall time of the
verification, and the other account's charges meanwhile (count, p99 and worst, in ms).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.procs import RedisServer
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.store.ledger_check import replay_ledger
from creditgate.store.store import RedisStore

FILL = """
for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'kind', 'grant', 'amount', '1', 'balance', '0')
end
redis.call('HINCRBY', KEYS[2], 'balance', tonumber(ARGV[1]))
"""
RETENTION = 10_000_000  # the schema's largest: nothing is folded while the bench fills the ledger


def _charge_until(port: int, go: Any, done: Any, out: Any) -> None:
    """In a process of its own (so that the verification's Python work does not delay it): charge the
    bystander one request at a time from ``go`` to ``done``; send back each charge's latency (ms)."""
    store = RedisStore.from_settings(RedisSettings(host="127.0.0.1", port=port, read_timeout=10_000))
    latencies: list[float] = []
    go.wait()
    while not done.is_set():
        started = time.perf_counter()
        store.charge(ChargeRequest("bystander", 1, ledger_retention=RETENTION))
        latencies.append((time.perf_counter() - started) * 1000)
    out.send(latencies)
    store.close()


def _charges_during(port: int, work: Callable[[], Any]) -> tuple[float, list[float]]:
    """``work``'s wall time, and the latency of each charge another process made meanwhile (ms)."""
    context = multiprocessing.get_context("fork")
    go, done = context.Event(), context.Event()
    receive, send = context.Pipe(duplex=False)
    charger = context.Process(target=_charge_until, args=(port, go, done, send))
    charger.start()
    go.set()
    time.sleep(0.3)  # the bystander charges before the verification starts, and until it ends
    started = time.perf_counter()
    work()
    wall = time.perf_counter() - started
    done.set()
    latencies: list[float] = receive.recv()
    charger.join()
    return wall, latencies


def _held(redis: RedisServer, account_tag: str) -> tuple[int, int, int, str]:
    """From SLOWLOG: the longest single command touching the account's keys, the longest transaction
    (its commands' durations summed, per client), the median XRANGE, in µs, and the longest command."""
    worst, worst_name = 0, ""
    ranges: list[int] = []
    open_tx: dict[str, int] = {}
    longest_tx = 0
    for entry in reversed(redis.client.slowlog_get(100_000)):  # oldest first
        args = entry["command"].decode(errors="replace").split()
        who = str(entry.get("client_address", b""))
        if args[0].upper() == "MULTI":
            open_tx[who] = 0
            continue
        if account_tag not in entry["command"].decode(errors="replace"):
            open_tx.pop(who, None)
            continue
        duration = int(entry["duration"])
        if args[0].upper() == "XRANGE":
            ranges.append(duration)
        if duration > worst:
            worst, worst_name = duration, " ".join(args[:1] + args[2:])
        if who in open_tx:
            open_tx[who] += duration
            longest_tx = max(longest_tx, open_tx[who])
        else:
            longest_tx = max(longest_tx, duration)
    return worst, longest_tx, int(statistics.median(ranges)) if ranges else 0, worst_name


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench ledger-verify")
    p.add_argument("--entries", type=int, default=300_000, help="ledger entries (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="verifications per way (default: %(default)s)")
    args = p.parse_args(argv)
    redis = RedisServer()
    store = RedisStore.from_settings(RedisSettings(host="127.0.0.1", port=redis.port, read_timeout=10_000))
    try:
        redis.client.config_set("slowlog-max-len", 100_000)
        admin = Admin(store, ledger_retention=RETENTION)
        admin.apply_plan(Plan("bench", period=Period.MONTH, allowance=0, prepaid=True))
        for account in ("acme", "bystander"):
            admin.subscribe(account, "bench")
        admin.grant("bystander", 10**12)
        keys = store.keys.account("acme")
        for done in range(0, args.entries, 50_000):
            redis.client.eval(FILL, 2, keys.ledger, keys.state, min(50_000, args.entries - done))

        def one_multi() -> None:
            pipe = redis.client.pipeline(transaction=True)
            pipe.hgetall(keys.state)
            pipe.xrange(keys.ledger, "-", "+")
            pipe.execute()

        def batches() -> None:
            assert replay_ledger(store, "acme").ok

        print(f"# python -m bench ledger-verify --entries {args.entries} --repeat {args.repeat}")
        print(f"# {args.entries:,} ledger entries; another process charges one request at a time meanwhile\n")
        print(
            "| verification | longest command µs | longest transaction µs | median XRANGE µs | wall ms "
            "| bystander charges | p99 ms | worst ms | longest command |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for name, work in (
            ("one MULTI, XRANGE - + (before)", one_multi),
            ("batches of 1000 (after)", batches),
        ):
            for _ in range(args.repeat):
                # Alone, every command logged (a script's own commands are logged too: the bystander's
                # would push the verification's out of the log) ...
                redis.client.config_set("slowlog-log-slower-than", 0)
                redis.client.slowlog_reset()
                work()
                worst, transaction, median, command = _held(redis, "{acme}")
                # ... then again, unlogged, while the bystander charges.
                redis.client.config_set("slowlog-log-slower-than", -1)
                wall, latencies = _charges_during(redis.port, work)
                p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else max(latencies)
                print(
                    f"| {name} | {worst:,} | {transaction:,} | {median:,} | {wall * 1000:,.0f} "
                    f"| {len(latencies):,} | {p99:.2f} | {max(latencies):.2f} | `{command}` |"
                )
    finally:
        store.close()
        redis.stop()
