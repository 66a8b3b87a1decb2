"""``python -m bench usage-totals``: ``/v1/usage/totals`` and ``/metrics`` at many accounts, and the gate's
charges on the same Redis meanwhile.

On a redis-server of its own, ``--accounts`` accounts (100,000 by default) are subscribed, each charged
once today, and ``--per-day`` random accounts charged on each of the 399 days before (all through the
charge script, which keeps the day's totals beside each account's counters). Then, against a real
``credit-gate serve`` (uvicorn, in this process), while another process charges one account a request
at a time:

- ``GET /v1/usage/totals`` over 400 days (``--repeat`` times): wall time of each answer;
- ``GET /metrics``: wall time of each scrape;

and the bystander's charge latency (p50, p99, worst, ms) with no reads, then during the reads, and the
longest single Redis command while the reads ran (SLOWLOG: how long Redis itself was held).
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import threading
import time
from typing import Any

import requests
import uvicorn

from bench.procs import RedisServer, free_port
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import DAY_SECONDS, Period
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.service.server import build
from creditgate.store.store import RedisStore

READ_TOKEN = "bench-read-token-0123456789abcdef"
DAYS = 400


def _settings(port: int) -> RedisSettings:
    return RedisSettings(host="127.0.0.1", port=port, read_timeout=10_000)


def _charge_many(port: int, work: list[tuple[str, int, str]]) -> None:
    store = RedisStore.from_settings(_settings(port))
    for account, now, route in work:
        store.charge(ChargeRequest(account, 1, now=now, route=route))
    store.close()


def _seed(port: int, accounts: int, per_day: int, now: int) -> int:
    store = RedisStore.from_settings(_settings(port))
    admin = Admin(store)
    start = now - now % DAY_SECONDS - (DAYS - 1) * DAY_SECONDS
    admin.apply_plan(Plan("bench", period=Period.NONE, allowance=0, prepaid=True))
    names = [f"acct-{i:06d}" for i in range(accounts)]
    for name in names:
        admin.subscribe(name, "bench", starts_at=start)
    client: Any = store.client
    pipe = client.pipeline(transaction=False)
    for name in names:  # a balance for the charges (the gate's script reads it; no ledger needed here)
        pipe.hset(store.keys.account(name).state, "balance", 10_000)
    pipe.execute()
    store.close()
    rng = random.Random(7)
    routes = [f"route:r{i}" for i in range(8)]
    work = [(name, now - 60, rng.choice(routes)) for name in names]
    for day in range(DAYS - 1):
        at = start + day * DAY_SECONDS + 3600
        work += [(rng.choice(names), at, rng.choice(routes)) for _ in range(per_day)]
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_charge_many, args=(port, work[i::2])) for i in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return len(work)


def _bystander(port: int, go: Any, done: Any, out: Any) -> None:
    store = RedisStore.from_settings(_settings(port))
    latencies: list[float] = []
    go.wait()
    while not done.is_set():
        started = time.perf_counter()
        store.charge(ChargeRequest("acct-000000", 0))
        latencies.append((time.perf_counter() - started) * 1000)
    out.send(latencies)
    store.close()


def _during(port: int, work: Any) -> tuple[Any, list[float]]:
    context = multiprocessing.get_context("fork")
    go, done = context.Event(), context.Event()
    receive, send = context.Pipe(duplex=False)
    charger = context.Process(target=_bystander, args=(port, go, done, send))
    charger.start()
    go.set()
    time.sleep(0.5)
    result = work()
    time.sleep(0.2)
    done.set()
    latencies: list[float] = receive.recv()
    charger.join()
    return result, latencies


def _figures(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[int(len(ordered) * 0.99) - 1] if ordered else 0.0
    median, worst = statistics.median(ordered), ordered[-1]
    return f"{len(ordered)} charges, p50 {median:.2f} ms, p99 {p99:.2f} ms, worst {worst:.2f} ms"


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench usage-totals")
    p.add_argument("--accounts", type=int, default=100_000, help="accounts (default: %(default)s)")
    p.add_argument(
        "--per-day", type=int, default=500, help="charges on each earlier day (default: %(default)s)"
    )
    p.add_argument("--repeat", type=int, default=5, help="reads of each kind (default: %(default)s)")
    args = p.parse_args(argv)
    redis = RedisServer()
    now = int(time.time())
    try:
        started = time.perf_counter()
        charges = _seed(redis.port, args.accounts, args.per_day, now)
        print(
            f"seeded {args.accounts} accounts, {charges} charges over {DAYS} days "
            f"in {time.perf_counter() - started:.0f} s"
        )
        app, _ = build(
            _settings(redis.port), host="127.0.0.1", environ={"CREDIT_GATE_READ_TOKENS": READ_TOKEN}
        )
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        session = requests.Session()
        session.trust_env = False
        session.headers["Authorization"] = f"Bearer {READ_TOKEN}"
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if session.get(url + "/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        since = time.strftime("%Y-%m-%d", time.gmtime(now - (DAYS - 1) * DAY_SECONDS))

        def reads() -> dict[str, list[float]]:
            times: dict[str, list[float]] = {"totals": [], "metrics": []}
            for _ in range(args.repeat):
                t = time.perf_counter()
                answer = session.get(url + "/v1/usage/totals", params={"since": since}, timeout=600)
                answer.raise_for_status()
                times["totals"].append(time.perf_counter() - t)
                t = time.perf_counter()
                session.get(url + "/metrics", timeout=600).raise_for_status()
                times["metrics"].append(time.perf_counter() - t)
            body = answer.json()
            print(
                f"totals: {len(body['days'])} days, {body['total']['requests']} requests, "
                f"{body['accounts_with_usage']} accounts with usage, top {body['top_accounts'][0]['account']}"
            )
            return times

        _, quiet = _during(redis.port, lambda: time.sleep(3))
        redis.client.config_set("slowlog-log-slower-than", 0)  # every command, with its Redis time
        redis.client.config_set("slowlog-max-len", 1_000_000)
        redis.client.slowlog_reset()
        times, busy = _during(redis.port, reads)
        longest = max(redis.client.slowlog_get(1_000_000), key=lambda e: int(e["duration"]), default=None)
        if longest is not None:
            command = " ".join(str(longest["command"].decode(errors="replace")).split()[:2])
            print(f"longest Redis command during the reads: {int(longest['duration'])} us ({command} ...)")
        for name, values in times.items():
            print(
                f"{name}: "
                + ", ".join(f"{v * 1000:.0f} ms" for v in values)
                + f" (worst {max(values):.3f} s)"
            )
        print(f"bystander, no reads:     {_figures(quiet)}")
        print(f"bystander, during reads: {_figures(busy)}")
        server.should_exit = True
    finally:
        redis.stop()


__all__ = ["main"]
