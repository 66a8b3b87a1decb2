"""The command line: ``python -m bench [options]`` (``make bench`` runs it with the defaults)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from bench import js_peer
from bench.instructions import InstructionCell, instructions
from bench.lineup import Settings
from bench.procs import MODE_FLAGS, BenchError, machine
from bench.report import as_json, markdown
from bench.runner import Bench, LongResult, OverspendResult
from creditgate.kong.processes import RUNTIMES


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _concurrencies(text: str) -> tuple[int, ...]:
    try:
        values = tuple(_positive(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"a comma-separated list of integers, got {text!r}") from error
    if not values:
        raise argparse.ArgumentTypeError("at least one concurrency")
    return values


def parser() -> argparse.ArgumentParser:
    defaults = Settings()
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="credit-gate against a baseline plugin making the same PDK calls, through Kong's "
        "plugin-server protocol, on a redis-server of its own, on each plugin-server runtime, against "
        "kong-pdk 0.36 gevent's baseline (the reference) and Kong's JavaScript plugin server (the peer).",
    )
    p.add_argument(
        "--runtime",
        action="append",
        choices=RUNTIMES,
        help="the Python servers' runtime, repeatable: credit-gate's own or kong-pdk's (default: both)",
    )
    p.add_argument(
        "--mode",
        action="append",
        choices=sorted(MODE_FLAGS),
        help="kong-pdk's concurrency mode for the kong-pdk runtime's rows, repeatable (default: threads and "
        "gevent); credit-gate's runtime has none and runs once",
    )
    p.add_argument(
        "--no-js",
        action="store_true",
        help="skip the peer row, Kong's JavaScript plugin server (which needs node and npm)",
    )
    p.add_argument(
        "--processes",
        type=_concurrencies,
        default=defaults.processes,
        help="the gate server's processes (--processes), comma-separated: a row set each, side by side "
        "(default: %(default)s, today's single process and one per core)",
    )
    p.add_argument(
        "--redis",
        action="append",
        choices=("tcp", "unix"),
        help="how the gate reaches Redis, repeatable: loopback TCP, or its unix socket (default: both)",
    )
    p.add_argument(
        "--concurrency",
        type=_concurrencies,
        default=defaults.concurrencies,
        help="requests in flight, comma-separated (default: %(default)s)",
    )
    p.add_argument(
        "--requests", type=_positive, default=defaults.requests, help="per window (default: %(default)s)"
    )
    p.add_argument("--warmup", type=int, default=defaults.warmup, help="per window (default: %(default)s)")
    p.add_argument(
        "--repeat",
        type=_positive,
        default=defaults.repeat,
        help="windows per path, taken in turns; the median is reported (default: %(default)s)",
    )
    p.add_argument(
        "--drivers",
        type=_positive,
        default=defaults.drivers,
        help="load driver processes (default: %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=defaults.timeout,
        help="seconds a window may take (default: %(default)s)",
    )
    p.add_argument("--no-table", action="store_true", help="skip the side-by-side table")
    p.add_argument("--long", action="store_true", help="RSS growth over --long-requests, allowed and refused")
    p.add_argument("--long-requests", type=_positive, default=defaults.long_requests)
    p.add_argument("--long-concurrency", type=_positive, default=defaults.long_concurrency)
    p.add_argument("--overspend", action="store_true", help="many servers race for one account's balance")
    p.add_argument("--overspend-balance", type=_positive, default=defaults.overspend_balance)
    p.add_argument("--overspend-requests", type=_positive, default=defaults.overspend_requests)
    p.add_argument("--overspend-concurrency", type=_positive, default=defaults.overspend_concurrency)
    p.add_argument("--overspend-servers", type=_positive, default=defaults.overspend_servers)
    p.add_argument(
        "--instructions",
        action="store_true",
        help="user-space instructions per request, each server under valgrind's callgrind (slow: "
        "use --instruction-requests, --repeat and --concurrency to bound it)",
    )
    p.add_argument(
        "--instruction-requests",
        type=_positive,
        default=defaults.instruction_requests,
        help="per window of --instructions (default: %(default)s)",
    )
    p.add_argument(
        "--witness",
        action="store_true",
        help="the gate with bypass_witness: true (docs/fail-closed.md), to count what it costs",
    )
    p.add_argument("--json", type=Path, help="also write the raw results as JSON to this path")
    return p


def command_line(argv: list[str]) -> str:
    """The command as typed from the repository, without this machine's paths."""
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(Path.cwd())) if python.is_absolute() else str(python)
    except ValueError:
        shown = "python"
    return shlex.join([shown, "-m", "bench", *argv])


def main(argv: list[str] | None = None) -> None:
    args_list = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(args_list)
    settings = Settings(
        runtimes=tuple(dict.fromkeys(args.runtime)) if args.runtime else Settings.runtimes,
        modes=tuple(dict.fromkeys(args.mode)) if args.mode else Settings.modes,
        js=not args.no_js,
        transports=tuple(dict.fromkeys(args.redis)) if args.redis else Settings.transports,
        processes=tuple(dict.fromkeys(args.processes)),
        concurrencies=args.concurrency,
        requests=args.requests,
        warmup=args.warmup,
        repeat=args.repeat,
        drivers=args.drivers,
        timeout=args.timeout,
        table=not args.no_table,
        long=args.long,
        long_requests=args.long_requests,
        long_concurrency=args.long_concurrency,
        overspend=args.overspend,
        overspend_balance=args.overspend_balance,
        overspend_requests=args.overspend_requests,
        overspend_concurrency=args.overspend_concurrency,
        overspend_servers=args.overspend_servers,
        instructions=args.instructions,
        instruction_requests=args.instruction_requests,
        witness=args.witness,
    )
    command = command_line(args_list)
    about = machine()
    if settings.js:
        about |= js_peer.versions()
    print(f"# {command}\n# {json.dumps(about)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    longs: list[LongResult] = []
    overspends: list[OverspendResult] = []
    counted: list[InstructionCell] = []
    try:
        with Bench(settings) as bench:
            cells = bench.table() if settings.table else []
            if settings.long:
                longs = bench.long()
            if settings.overspend:
                overspends = bench.overspend()
            if settings.instructions:
                counted = instructions(bench)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"# finished in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    print(markdown(command, about, settings, cells, longs, overspends, counted), end="")
    if args.json:
        payload = as_json(command, about, settings, cells, longs, overspends, counted)
        payload["duration_seconds"] = round(time.monotonic() - started, 1)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nRaw results: {os.fspath(args.json)}")
