"""``python -m bench money-model``: the money model's stateful test, long, on random sequences.

It runs ``tests/money/test_model_redis.py`` and ``tests/store/test_bad_data_generated.py`` under the
``money-long`` Hypothesis profile (see ``tests/money_support.py``) with a seed it prints first, so a
failing run is reproduced with the same command and ``--seed``.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time

TESTS = ["tests/money/test_model_redis.py", "tests/store/test_bad_data_generated.py"]


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench money-model")
    p.add_argument("--steps", type=int, default=20_000, help="model steps in all (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: a random one, printed)")
    p.add_argument("--no-shrink", action="store_true", help="report a failing sequence without shrinking it")
    args = p.parse_args(argv)
    seed = random.randrange(2**32) if args.seed is None else args.seed
    env = dict(os.environ, MONEY_MODEL_PROFILE="money-long", MONEY_MODEL_STEPS=str(args.steps))
    if args.no_shrink:
        env["MONEY_MODEL_SHRINK"] = "0"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        f"--hypothesis-seed={seed}",
        *TESTS,
    ]
    print(f"# python -m bench money-model --steps {args.steps} --seed {seed}", flush=True)
    started = time.monotonic()
    code = subprocess.call(command, env=env)
    print(f"# finished in {time.monotonic() - started:.0f}s, seed {seed}: {'ok' if code == 0 else 'FAILED'}")
    sys.exit(code)
