"""``credit-gate``: plans, subscriptions, credits, the ledger and usage, from a terminal or a script.

A thin layer over ``creditgate.ops.admin.Admin``: parse, call, print. Tables for people, ``--json`` for
scripts, and one line on stderr when something fails, with what to do about it. One module per
subject (``plans``, ``accounts``, ``credits``, ``reports``, ``events``, ``deployment``) holds its commands;
``app`` the group, its connection options and the error handling, ``common`` and ``output`` what
they share. Rules about the data live in ``Admin`` and ``creditgate.ops.documents``, never here, and
nothing here knows the store.

Exit codes:
    0  done
    1  invalid input: a bad option, argument, file or value
    2  not found: an unknown plan or account
    3  conflict: refused by the current state (plan in use, balance too low)
    4  store unavailable: Redis unreachable, too slow, or refusing the credentials
    5  done, with problems reported: rows rejected by an import, ledgers that do not replay
  141  stopped because the reader closed the output (``export ... | head``): 128 + SIGPIPE, as a shell
       reports any program that a pipe's reader stopped early
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from creditgate.cli import accounts, credits, deployment, events, plans, reports
from creditgate.cli.app import cli
from creditgate.cli.common import (
    EXIT_CONFLICT,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PIPE_CLOSED,
    EXIT_PROBLEMS,
    EXIT_STORE,
)

for _subject in (plans, accounts, credits, reports, events, deployment):
    for _command in _subject.COMMANDS:
        cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``credit-gate`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="credit-gate")
    raise SystemExit(EXIT_OK)  # not reached: main exits


__all__ = [
    "EXIT_CONFLICT",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PIPE_CLOSED",
    "EXIT_PROBLEMS",
    "EXIT_STORE",
    "cli",
    "main",
]
