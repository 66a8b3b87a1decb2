"""The real scripts held against the reference model, on random sequences of operations.

Each sequence runs through the same Python entry points the gate and the CLI use (``RedisStore`` for
charges and settlements, ``Admin`` for everything an operator does) on a real Redis, and through
``AccountModel`` side by side. Charges come from several nodes whose clocks differ from each other and
jump forward and back. After every step the two must agree on the decision, its reason and figures,
and on the whole account; the ledger must replay to the balance. The payments' fields (``debt``,
``frozen``, ``grace_until``, and the past_due status a failed renewal brings) are written into the hash
at random, as a reversal or the Stripe lifecycle would, from the first step on: charges meet debts and
graces, and grants pay debts. Alerts change at random, so the threshold events' writes run in the same
steps: each level crossing the model sees is raised once, and an event about time once per what it is
about.

Profiles and reproduction: ``tests/money_support.py``; the long run: ``bench/README.md``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

import pytest
import redis
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.typing import EncodableT, FieldT

from creditgate.core.alerts import Alerts
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan, Status
from creditgate.core.periods import DAY_SECONDS, Period
from creditgate.core.policy import ChargeRequest
from creditgate.errors import Conflict, CreditGateError, IdempotencyKeyReused, InvalidDocument, NotFound
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.conftest import Clock
from tests.money.account_model import CAP, AccountModel, ChargeOutcome, Terms, ledger_bound
from tests.money_support import module_constants_left_out, money_settings
from tests.redis_servers import RedisServer

ACCOUNT = "acct"
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
IDEMPOTENCY_WINDOW = 3600  # Redis's own clock: a run never outlasts it
SETTLE_WINDOW = 40 * 86_400  # what settling needs is kept this long (the longest window settled with)
PLANS = {
    "free": Plan("free", period=Period.DAY, allowance=3, prepaid=False),
    "daily": Plan("daily", period=Period.DAY, allowance=5, prepaid=True),
    "weekly": Plan("weekly", period=Period.WEEK, allowance=20, prepaid=True),
    "monthly": Plan("monthly", period=Period.MONTH, allowance=10, prepaid=False),
    "once": Plan("once", period=Period.NONE, allowance=7, prepaid=True),
    "huge": Plan("huge", period=Period.MONTH, allowance=CAP, prepaid=True),
}
STATUSES = [Status.ACTIVE, Status.ACTIVE, Status.TRIALING, Status.PAST_DUE, Status.SUSPENDED, Status.CANCELED]

small = st.integers(0, 12)
amounts = st.one_of(st.integers(1, 60), st.sampled_from([CAP, CAP - 1, CAP // 2 + 1]), st.integers(1, CAP))
# Mostly watched: an unset level is one choice in three.
alert_sets = st.builds(
    Alerts,
    balance_below=st.integers(1, 60) | st.integers(1, 60) | st.none(),
    depleted=st.booleans(),
    allowance_below_percent=st.integers(1, 100) | st.integers(1, 100) | st.none(),
    expiring_within=st.integers(1, 3 * DAY_SECONDS) | st.none(),
    first_refusal=st.booleans(),
)
costs = st.one_of(small, small, st.sampled_from([CAP, CAP // 2 + 1]))
# Mostly none: a debt refuses every request until a grant pays it.
debts = st.one_of(st.just(0), st.just(0), st.integers(1, 60), st.sampled_from([CAP, CAP - 1]))
offsets = st.one_of(
    st.integers(-3 * DAY_SECONDS, 3 * DAY_SECONDS),
    st.sampled_from([-1, 0, 1, DAY_SECONDS - 1, DAY_SECONDS, 20 * DAY_SECONDS, -40 * DAY_SECONDS]),
    st.integers(-70 * DAY_SECONDS, 70 * DAY_SECONDS),
)
steps = st.one_of(
    st.sampled_from([1, 2, 59, 3600, DAY_SECONDS - 1, DAY_SECONDS, 7 * DAY_SECONDS, 31 * DAY_SECONDS]),
    st.integers(0, 40 * DAY_SECONDS),
)
skews = st.lists(
    st.one_of(st.integers(-3, 3), st.integers(-2 * DAY_SECONDS, 2 * DAY_SECONDS)), min_size=1, max_size=4
)


def text(value: bytes | str) -> str:
    """A reply of the test's client (bytes: it does not decode) as text."""
    return value.decode() if isinstance(value, bytes) else value


def terms_of(plan: Plan) -> Terms:
    return Terms(plan.name, plan.period, plan.allowance, plan.prepaid)


@dataclass(frozen=True)
class Run:
    """What one test run shares across its sequences: the server, a store on it and a raw client."""

    settings: RedisSettings
    store: RedisStore
    client: redis.Redis


@pytest.fixture
def run(redis_server: RedisServer, settings: RedisSettings) -> Iterator[Run]:
    store = RedisStore.from_settings(settings)
    client = redis_server.client()
    yield Run(settings, store, client)
    client.close()
    store.close()


def make_machine(run: Run) -> type[RuleBasedStateMachine]:
    class MoneyMachine(RuleBasedStateMachine):
        charges = Bundle("charges")

        def __init__(self) -> None:
            super().__init__()
            run.client.flushall()
            self.clock = Clock(T0)
            self.store = run.store
            self.model = AccountModel()
            self.plans = dict(PLANS)
            self.skews = [0]
            self.retention = 8
            self.admin = Admin(self.store, ledger_retention=self.retention, clock=self.clock)
            self.ids: dict[int, str] = {}  # model charge ref -> the real ledger id
            # The keyed requests charged so far (cost, key, member, hold, route, entitled), for retries
            self.sent: list[tuple[int, str, str, int, str, tuple[str, ...]]] = []
            self.alerts = Alerts()
            self.crossings = {"balance.low": 0, "balance.depleted": 0, "allowance.low": 0}
            self.cleared_at = [0]  # stream lengths when every alert was cleared (what was told is forgotten)
            for plan in self.plans.values():
                self.admin.apply_plan(plan)

        # Set-up: the nodes' clocks, the retention, and a first subscription with some credit.

        @initialize(
            node_skews=skews,
            retention=st.sampled_from([3, 8, 40]),
            plan=st.sampled_from(sorted(PLANS)),
            anchor=offsets,
            balance=st.integers(0, 100),
            alerts=alert_sets,
            debt=st.none() | debts,
            # A renewal failed lately: its grace runs on (0: it ends now, to the second).
            grace=st.none() | st.sampled_from([0, 1]) | st.integers(0, 3 * DAY_SECONDS),
            past_due=st.booleans(),
        )
        def start(
            self,
            node_skews: list[int],
            retention: int,
            plan: str,
            anchor: int,
            balance: int,
            alerts: Alerts,
            debt: int | None,
            grace: int | None,
            past_due: bool,
        ) -> None:
            self.skews = [0, *node_skews]
            self.retention = retention
            self.admin = Admin(self.store, ledger_retention=retention, clock=self.clock)
            self.subscribe(plan, Status.ACTIVE, -DAY_SECONDS, anchor, None)
            if balance:
                self.grant(balance, "")
            self.alerts_change(alerts)
            # Every sequence starts where the payments may have left the account: in debt, past due.
            self.payments_write(debt, None, grace, past_due)

        def now(self, node: int) -> int:
            return self.clock.now + self.skews[node % len(self.skews)]

        # Time

        @rule(seconds=steps)
        def time_passes(self, seconds: int) -> None:
            self.clock.now += seconds

        @rule(seconds=st.integers(1, 2 * DAY_SECONDS))
        def clock_jumps_back(self, seconds: int) -> None:
            self.clock.now -= seconds

        # Operators

        @rule(
            plan=st.sampled_from(sorted(PLANS)),
            status=st.sampled_from(STATUSES),
            start=st.integers(-10 * DAY_SECONDS, DAY_SECONDS),
            anchor=offsets,
            length=st.none() | st.integers(1, 90 * DAY_SECONDS),
        )
        def subscribe(self, plan: str, status: Status, start: int, anchor: int, length: int | None) -> None:
            starts_at = max(self.clock.now + start, 0)
            anchor_at = max(self.clock.now + anchor, 0)
            expires_at = None if length is None else starts_at + length
            self.admin.subscribe(
                ACCOUNT, plan, status=status, starts_at=starts_at, anchor=anchor_at, expires_at=expires_at
            )
            self.model.subscribe(
                terms_of(self.plans[plan]), status.value, starts_at, anchor_at, expires_at or 0
            )

        @rule(plan=st.sampled_from(sorted(PLANS)))
        def change_plan(self, plan: str) -> None:
            expected = self.model.change_plan(terms_of(self.plans[plan]))
            try:
                previous = self.admin.change_plan(ACCOUNT, plan)
            except NotFound:
                previous = ""
            assert previous == expected

        @rule(
            plan=st.sampled_from(sorted(PLANS)),
            period=st.sampled_from(list(Period)),
            allowance=st.one_of(small, st.just(CAP)),
            prepaid=st.booleans(),
        )
        def plan_terms_change(self, plan: str, period: Period, allowance: int, prepaid: bool) -> None:
            new = Plan(plan, period=period, allowance=allowance, prepaid=prepaid)
            self.plans[plan] = new
            updated = self.admin.apply_plan(new)
            assert (ACCOUNT in updated) == self.model.sync_terms(terms_of(new))

        @rule(status=st.sampled_from(list(Status)))
        def status_changes(self, status: Status) -> None:
            expected = self.model.set_status(status.value)
            try:
                previous = self.admin.set_status(ACCOUNT, status)
            except NotFound:
                previous = ""
            assert previous == expected

        @rule(amount=amounts, key=st.sampled_from(["", "", "g1", "g2", "a1"]))
        def grant(self, amount: int, key: str) -> None:
            expected = self.model.grant(amount, key)
            try:
                result = self.admin.grant(ACCOUNT, amount, idempotency_key=key)
            except IdempotencyKeyReused:
                outcome = "reused"
            except (Conflict, InvalidDocument):
                outcome = "refused"
            else:
                outcome = "applied" if result.applied else "already"
                theirs = (result.balance, result.debt, result.debt_paid)
                assert theirs == (expected.balance, expected.debt, expected.debt_paid), f"grant {amount}"
            assert outcome == expected.outcome, f"grant {amount} (key {key!r})"

        @rule(amount=amounts, key=st.sampled_from(["", "", "a1", "a2", "g1"]))
        def adjust_down(self, amount: int, key: str) -> None:
            exists = self.model.exists
            expected = self.model.adjust_down(amount, key) if exists else None
            try:
                result = self.admin.adjust_down(ACCOUNT, amount, idempotency_key=key)
            except NotFound:
                assert expected is None
                return
            except IdempotencyKeyReused:
                outcome = "reused"
            except Conflict:
                outcome = "refused"
            else:
                outcome = "applied" if result.applied else "already"
                assert expected is not None and (result.balance, result.debt, result.debt_paid) == (
                    expected.balance,
                    expected.debt,
                    0,  # taking credits away never touches the debt
                )
            assert expected is not None and outcome == expected.outcome, f"adjust -{amount} (key {key!r})"

        # What the payments write (a reversal the balance could not cover, a dispute's hold) and the
        # Stripe lifecycle (a past_due subscription's grace): written into the hash as they would be.

        @rule(
            debt=st.none() | debts,
            frozen=st.none() | st.integers(0, 60),
            grace=st.none() | offsets | st.sampled_from([0, 1, DAY_SECONDS]),
            renewal_failed=st.booleans(),
        )
        def payments_write(
            self, debt: int | None, frozen: int | None, grace: int | None, renewal_failed: bool
        ) -> None:
            """What a payment's reversal leaves (debt, and what disputes hold), or what the lifecycle
            writes when a renewal fails (past_due and its grace, in one step); None leaves a field be."""
            grace_until = None if grace is None else max(self.clock.now + grace, 0)
            written = {"debt": debt, "frozen": frozen, "grace_until": grace_until}
            fields: dict[FieldT, EncodableT] = {
                name: value for name, value in written.items() if value is not None
            }
            self.model.owe(debt, frozen)
            if grace_until is not None:
                self.model.set_grace(grace_until)
                if renewal_failed and self.model.terms is not None:
                    fields["status"] = Status.PAST_DUE.value
                    self.model.set_status(Status.PAST_DUE.value)
            if fields:
                run.client.hset(self.store.keys.account(ACCOUNT).state, mapping=fields)

        @rule(alerts=alert_sets)
        def alerts_change(self, alerts: Alerts) -> None:
            self.admin.set_alerts(ACCOUNT, alerts)
            self.alerts = alerts
            if not alerts.any:
                self.cleared_at.append(len(self.events()))

        def events(self) -> list[dict[str, str]]:
            raw = run.client.xrange(self.store.keys.account(ACCOUNT).events)
            assert raw is not None
            return [{text(k): text(v) for k, v in (fields or {}).items()} for _, fields in raw]

        def count_crossings(self, before: int, expected: ChargeOutcome) -> None:
            """The crossings of the model's charge, as the charge script must raise them."""
            if not expected.allowed or expected.replayed:
                return
            level, after = self.alerts.balance_below, expected.balance
            if level is not None and before >= level > after:
                self.crossings["balance.low"] += 1
            if self.alerts.depleted and before > 0 and after == 0:
                self.crossings["balance.depleted"] += 1
            percent, terms = self.alerts.allowance_below_percent, self.model.terms
            if percent is not None and terms is not None and terms.allowance > 0:
                mark = terms.allowance * percent // 100
                left = expected.allowance_remaining
                if left + expected.from_allowance >= mark > left:
                    self.crossings["allowance.low"] += 1

        @rule(member=st.sampled_from(["m1", "m2"]), cap=st.none() | small)
        def member_cap(self, member: str, cap: int | None) -> None:
            self.admin.set_member_cap(ACCOUNT, member, cap)
            self.model.set_member_cap(member, cap)

        # Requests

        @rule(
            target=charges,
            node=st.integers(0, 4),
            cost=costs,
            key=st.sampled_from(["", "", "", "r1", "r2"]),
            member=st.sampled_from(["", "", "m1", "m2"]),
            hold=st.sampled_from([0, 0, 60, 3600]),
            route=st.sampled_from(["global", "route:a"]),
            entitled=st.sampled_from([(), (), ("daily", "weekly"), ("free", "once", "monthly", "huge")]),
        )
        def charge(
            self,
            node: int,
            cost: int,
            key: str,
            member: str,
            hold: int,
            route: str,
            entitled: tuple[str, ...],
        ) -> int:
            ref = self.send_charge(node, cost, key, member, hold, route, entitled)
            if key and ref >= 0:
                self.sent.append((cost, key, member, hold, route, entitled))
            return ref

        @rule(
            target=charges,
            node=st.integers(0, 4),
            pick=st.integers(0, 1_000),
            entitled=st.none()
            | st.sampled_from([(), ("daily", "weekly"), ("free", "once", "monthly", "huge")]),
            member=st.none() | st.sampled_from(["", "m1", "m2"]),
        )
        def retry(self, node: int, pick: int, entitled: tuple[str, ...] | None, member: str | None) -> int:
            """A keyed request sent again: as it was (a replay while it would still be allowed), or by
            another consumer, or on a route whose entitlement changed since."""
            if not self.sent:  # (a precondition would do, but Hypothesis then rarely picks the rule)
                return -1
            cost, key, first_member, hold, route, first_entitled = self.sent[pick % len(self.sent)]
            return self.send_charge(
                node,
                cost,
                key,
                first_member if member is None else member,
                hold,
                route,
                first_entitled if entitled is None else entitled,
            )

        def send_charge(
            self,
            node: int,
            cost: int,
            key: str,
            member: str,
            hold: int,
            route: str,
            entitled: tuple[str, ...],
        ) -> int:
            now = self.now(node)
            before = self.model.balance
            expected = self.model.charge(
                now, cost, entitled=entitled, route=route, key=key, member=member, hold_seconds=hold
            )
            self.count_crossings(before, expected)
            try:
                got = self.store.charge(
                    ChargeRequest(
                        ACCOUNT,
                        cost,
                        now=now,
                        entitled=entitled,
                        route=route,
                        ledger_retention=self.retention,
                        idempotency_key=key or None,
                        idempotency_window=IDEMPOTENCY_WINDOW if key else 0,
                        member=member,
                        hold_seconds=hold,
                        settle_window=SETTLE_WINDOW,
                    )
                )
            except CreditGateError as error:
                raise AssertionError(
                    f"charge {cost} at {now} failed: {error!r}; the model: {expected}"
                ) from None
            self.compare_charge(expected, got, now)
            if expected.charge is not None and not expected.replayed:
                self.ids[expected.charge] = got.charge_id
            if expected.replayed and expected.charge is not None:
                assert got.charge_id == self.ids[expected.charge], "a replay answers with its first charge"
            return expected.charge if expected.charge is not None else -1

        def compare_charge(self, expected: ChargeOutcome, got: object, now: int) -> None:
            fields = (
                "allowed",
                "replayed",
                "balance",
                "allowance_remaining",
                "from_allowance",
                "from_balance",
                "period_start",
                "period_end",
                "member_used",
                "member_cap",
                "debt",
            )
            mine = {name: getattr(expected, name) for name in fields}
            theirs = {name: getattr(got, name) for name in fields}
            mine["reason"] = expected.reason.value if expected.reason else None
            reason = getattr(got, "reason", None)
            theirs["reason"] = reason.value if reason is not None else None
            assert theirs == mine, f"charge at {now}: script {theirs} != model {mine}"
            if getattr(got, "from_allowance", 0) > 0:
                assert self.model.terms is not None and self.model.used <= self.model.terms.allowance

        @rule(
            ref=charges,
            node=st.integers(0, 4),
            keep=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
            refund=st.booleans(),
            window=st.sampled_from([60, 3600, 40 * DAY_SECONDS]),
        )
        def settle(self, ref: int, node: int, keep: float, refund: bool, window: int) -> None:
            charge = self.model.charges.get(ref)
            charge_id = self.ids.get(ref, "1-1")  # an id that names no charge of this account
            final = 0 if refund or charge is None else int(charge.cost * keep)
            now = self.now(node)
            expected = self.model.settle(ref if ref >= 0 else None, final, now, window=window, refund=refund)
            got = self.store.settle(
                ACCOUNT,
                charge_id,
                final,
                now=now,
                refund=refund,
                window_seconds=window,
                ledger_retention=self.retention,
            )
            theirs = (got.outcome, got.given_back, got.balance)
            mine = (expected.outcome, expected.given_back, expected.balance)
            assert theirs == mine, f"settle {charge_id} to {final} at {now}: script {theirs} != model {mine}"

        @precondition(lambda self: bool(self.model.history))
        @rule()
        def settle_a_grant(self) -> None:
            """A ledger id that is not a charge's settles nothing."""
            entry = self.store.ledger_tail(ACCOUNT, 1)
            if entry and entry[0].fields.get("kind") != "charge":
                got = self.store.settle(ACCOUNT, entry[0].id, 0, now=self.clock.now, refund=True)
                assert got.outcome == "unknown"

        # After every step

        @invariant()
        def the_account_agrees_with_the_model(self) -> None:
            STEPS.append(1)
            model = self.model
            state = self.store.account_state(ACCOUNT)
            theirs = (
                state.plan,
                state.status,
                state.starts_at,
                state.anchor,
                state.expires_at,
                state.allowance,
                state.prepaid,
                state.balance,
                state.used,
                state.period_start,
                state.period_end,
                state.period_requests,
                state.period_from_balance,
                state.period_restarts,
                state.debt,
                state.frozen,
                state.grace_until,
            )
            terms = model.terms
            mine = (
                terms.plan if terms else "",
                model.status,
                model.starts_at,
                model.anchor,
                model.expires_at,
                terms.allowance if terms else 0,
                terms.prepaid if terms else False,
                model.balance,
                model.used,
                model.period_start,
                model.period_end,
                model.period_requests,
                model.period_from_balance,
                model.restarts,
                model.debt,
                model.frozen,
                model.grace_until,
            )
            assert theirs == mine, f"account: script {theirs} != model {mine}"
            assert 0 <= state.balance <= CAP
            assert state.used >= 0

        @invariant()
        def each_crossing_is_raised_once(self) -> None:
            events = self.events()
            for kind, expected in self.crossings.items():
                assert sum(e["type"] == kind for e in events) == expected, kind
            bounds = [*self.cleared_at, len(events)]
            for start, end in pairwise(bounds):  # each span since alerts were cleared
                expiring = [
                    e["expires_at"] for e in events[start:end] if e["type"] == "subscription.expiring"
                ]
                assert all(a != b for a, b in pairwise(expiring)), f"told twice: {expiring}"
                periods = [
                    int(e["period_start"]) for e in events[start:end] if e["type"] == "account.refused"
                ]
                assert periods == sorted(set(periods)), f"a period told twice, or an earlier one: {periods}"

        @invariant()
        def pool_members_agree(self) -> None:
            raw = {
                text(k): text(v)
                for k, v in run.client.hgetall(self.store.keys.account(ACCOUNT).members).items()
            }
            caps = {k[4:]: int(v) for k, v in raw.items() if k.startswith("cap:")}
            assert caps == self.model.caps
            # "<period restarts>:<period start>:<n>": the period a member's use belongs to
            for member, (restarts, start, used) in self.model.member_use.items():
                assert raw.get(f"used:{member}") == f"{restarts}:{start}:{used}", member
            for member, (restarts, start, count) in self.model.member_requests.items():
                assert raw.get(f"requests:{member}") == f"{restarts}:{start}:{count}", member
            assert {k for k in raw if k.startswith("requests:")} == {
                f"requests:{m}" for m in self.model.member_requests
            }

        @invariant()
        def the_ledger_replays_to_the_balance(self) -> None:
            state, entries = self.store.ledger_snapshot(ACCOUNT)
            history = self.model.history
            assert len(entries) <= ledger_bound(self.retention)
            assert len(entries) <= len(history)
            kept = history[len(history) - len(entries) :]
            folded = sum(e.amount for e in history[: len(history) - len(entries)])
            assert state.ledger_base == folded, "the folded entries add up to ledger_base"
            running = state.ledger_base
            for entry, expected in zip(entries, kept, strict=True):
                got = (entry.fields["kind"], entry.amount, int(entry.fields["balance"]))
                running += entry.amount
                assert got == (expected.kind, expected.amount, expected.balance), entry
                assert int(entry.fields["balance"]) == running, "each entry's balance is the running balance"
            assert running == state.balance == self.model.replay()

    return MoneyMachine


STEPS: list[int] = []  # one per step checked, over every sequence of the run


def test_the_scripts_follow_the_model_on_random_sequences(run: Run) -> None:
    STEPS.clear()
    started = time.monotonic()
    with module_constants_left_out():
        # Untyped in the Hypothesis that Python 3.10 is pinned to (6.168), typed in 3.11's (6.170).
        run_state_machine_as_test(make_machine(run), settings=money_settings())  # type: ignore[no-untyped-call, unused-ignore]
    print(f"money model: {len(STEPS)} steps checked in {time.monotonic() - started:.1f} s")


def test_a_charge_before_a_period_restart_gets_nothing_back_from_the_new_period(
    admin: Admin, store: RedisStore
) -> None:
    """Both ways between a plan without periods and a daily one: the settlement gives back the balance's
    part only, as the model does (found by the sequences above)."""
    for plan in PLANS.values():
        admin.apply_plan(plan)
    admin.subscribe(ACCOUNT, "daily", starts_at=T0 - DAY_SECONDS, anchor=T0)
    admin.grant(ACCOUNT, 1)
    admin.change_plan(ACCOUNT, "once")
    first = store.charge(ChargeRequest(ACCOUNT, 1, now=T0, settle_window=SETTLE_WINDOW))
    assert first.from_allowance == 1
    admin.change_plan(ACCOUNT, "daily")  # another length: bounds 0 until the next charge
    got = store.settle(ACCOUNT, first.charge_id, 0, now=T0, window_seconds=60)
    assert (got.outcome, got.given_back, got.balance) == ("applied", 0, 1)
    second = store.charge(ChargeRequest(ACCOUNT, 3, now=T0 + 1, settle_window=SETTLE_WINDOW))
    admin.change_plan(ACCOUNT, "once")
    store.charge(ChargeRequest(ACCOUNT, 2, now=T0 + 2, settle_window=SETTLE_WINDOW))
    got = store.settle(ACCOUNT, second.charge_id, 0, now=T0 + 3, refund=True, window_seconds=60)
    assert (got.outcome, got.given_back, got.balance) == ("applied", 0, 1)
    assert store.account_state(ACCOUNT).used == 2
