"""The plan index: each plan's set of accounts (``Keys.plan_accounts``), kept with the account's plan.

Each plan's set holds the accounts whose hash names the plan: a plan's new terms reach the accounts of
its set (``Admin.apply_plan``), and a plan is deleted without --force only while no account of its set
is on it. On one server the script that writes an account's plan moves the account between the sets in
the same step (``move_plan_index`` in lua/_lib.lua). On a Redis Cluster the sets live on other slots
than the account's hash, so the store keeps them around the script: the new plan's set before it (a
crash after the script leaves the account in its plan's set), and ``repair`` after it.

The rule, on every topology: once every change of an account has returned, it is in the set of the
plan its hash names, and in no other set those changes named. An account may sit in another set for
a while (a change in flight, or a crash between the script and the repair); readers check each
account of a set against its hash all the same (``Admin.plan_subscribers``, lua/plan_terms.lua).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from creditgate.store.keys import Keys
from creditgate.store.replies import as_text


class PlanIndex:
    def __init__(
        self,
        keys: Keys,
        in_scripts: bool,
        run: Callable[..., Any],
        pipeline: Callable[[Callable[[Any], None]], list[Any]],
    ) -> None:
        self.keys = keys
        self.in_scripts = in_scripts  # the topology's keyspace says (Keyspace.plan_index_in_scripts)
        self._run = run
        self._pipeline = pipeline

    def args(self, account: str) -> list[str]:
        """The scripts' plan index arguments: head "" when the store keeps the index (a Cluster)."""
        head, tail = self.keys.plan_accounts_parts if self.in_scripts else ("", "")
        return [head, tail, account]

    def before(self, account: str, plan: str) -> None:
        """Before a script that may move the account to ``plan`` (a Cluster only)."""
        if not self.in_scripts:
            self._run("SADD", self.keys.plan_accounts(plan), account)

    def repair(self, account: str, plans: Sequence[str], current: str | None) -> None:
        """After a script that may have changed the account's plan (a Cluster only): the account into
        the set of ``current`` (the plan the script left; None: not known) and out of the other
        ``plans``' sets, then its plan read again, and again until two reads agree.

        Why that holds against a concurrent change of the same account: a removal from plan P's set is
        followed by a read of the account's plan; if that read says P, the next round puts the account
        back. If the account is moved to P after that read, the change that moved it adds it to P's set
        after its own script, so after this removal. Each round's writes are thus undone only by a later
        round, and the last round of the last change leaves the sets right.
        """
        if self.in_scripts:
            return
        state = self.keys.account(account).state
        names = {name for name in plans if name}

        def fill(held: str, pipe: Any) -> None:
            for name in sorted(names):
                if name == held:
                    pipe.sadd(self.keys.plan_accounts(name), account)
                else:
                    pipe.srem(self.keys.plan_accounts(name), account)

        if current is None:
            current = as_text(self._run("HGET", state, "plan") or b"")
        while True:
            if current:
                names.add(current)
            self._pipeline(partial(fill, current))
            again = as_text(self._run("HGET", state, "plan") or b"")
            if again == current:
                return
            current = again
