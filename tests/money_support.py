"""Shared by the money-model and bad-data tests: Hypothesis profiles and a full dump of an account's keys.

Profiles (``MONEY_MODEL_PROFILE``, default ``money-ci``):

- ``money-ci``: a few hundred steps, derandomized (the same sequences on every run, so CI is stable).
- ``money-long``: random sequences, ``MONEY_MODEL_STEPS`` steps in all (default 20,000); reproduce a
  failure with the ``--hypothesis-seed`` the run prints, or the ``@reproduce_failure`` blob.

No profile keeps a Hypothesis database: nothing is written into the repository.

A derandomized run repeats its sequences only if what Hypothesis draws does not depend on what else ran
in the process: ``module_constants_left_out`` keeps out the constants it otherwise collects from every
project module imported so far (so a module's tests imported or run before changed the sequences).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.internal.conjecture import providers

STEPS_PER_SEQUENCE = 40
_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "money-ci",
    max_examples=25,
    stateful_step_count=STEPS_PER_SEQUENCE,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SLOW,
)
settings.register_profile(
    "money-long",
    max_examples=max(int(os.environ.get("MONEY_MODEL_STEPS", "20000")) // STEPS_PER_SEQUENCE, 1),
    stateful_step_count=STEPS_PER_SEQUENCE,
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SLOW,
)


def money_settings() -> settings:
    """The profile the environment picks (``MONEY_MODEL_PROFILE``); ``MONEY_MODEL_SHRINK=0`` reports a
    failing sequence as found, without shrinking it (faster, longer)."""
    chosen = settings.get_profile(os.environ.get("MONEY_MODEL_PROFILE", "money-ci"))
    if os.environ.get("MONEY_MODEL_SHRINK") == "0":
        chosen = settings(chosen, phases=[Phase.explicit, Phase.reuse, Phase.generate])
    return chosen


@contextmanager
def module_constants_left_out() -> Iterator[None]:
    """Draw without the literals of the project's imported modules (Hypothesis mixes them into about one
    draw in twenty, from every module in ``sys.modules`` at the time), so that a derandomized run gives
    the same sequences whichever test modules were imported or run before it."""
    collect = getattr(providers, "_get_local_constants", None)
    cache = getattr(providers, "CONSTANTS_CACHE", None)
    if collect is None or cache is None:  # another Hypothesis release: nothing to leave out
        yield
        return
    none = getattr(providers, "Constants")()  # noqa: B009  (not in the module's public names)
    cache.cache.clear()  # the permitted constants of earlier draws, the modules' among them
    setattr(providers, "_get_local_constants", lambda: none)  # noqa: B010  (a private name, restored below)
    try:
        yield
    finally:
        setattr(providers, "_get_local_constants", collect)  # noqa: B010
        cache.cache.clear()


def bad_data_settings(examples: int) -> settings:
    """Bad-data properties: ``examples`` in CI, ten times more in the long profile."""
    long = os.environ.get("MONEY_MODEL_PROFILE") == "money-long"
    return settings(
        money_settings(),
        max_examples=examples * 10 if long else examples,
        stateful_step_count=STEPS_PER_SEQUENCE,
    )


def dump_keys(client: redis.Redis, pattern: str) -> dict[bytes, tuple[bytes | str, bytes | None, int]]:
    """Every key matching ``pattern``: its type, its serialized value (DUMP) and whether it expires.

    DUMP covers every type byte for byte (a stream's entries, ids and groups too), so two dumps are
    equal exactly when nothing was written.
    """
    out: dict[bytes, tuple[bytes | str, bytes | None, int]] = {}
    for key in client.scan_iter(match=pattern, count=1000):
        kind = client.type(key)
        ttl = client.ttl(key)
        out[key] = (kind, client.dump(key), -1 if ttl < 0 else 1)
    return out
