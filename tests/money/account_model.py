"""The money rules of one account, as plain Python: the reference the Lua scripts are held against.

``AccountModel`` is what one account's keys in Redis mean, and what every script does to them, written
without Redis, without Lua and without any concern for round trips. It is never used by the gate: the
tests run random sequences of operations through the real scripts and through this model side by side
and require the same answers and the same state after every step (``tests/money/test_model.py``).

The rules, each enforced by one method:

- **Periods never move backwards.** A period is a window of the anchor's lattice (``lattice_window``):
  for an anchor in the future too, the window that holds ``now``. The current period is replaced only
  by a later one, when a charge's ``now`` reaches its end; a caller whose clock is behind the period's
  start is counted in the current period, so clocks that differ between callers never restart it.
- **A refusal charges nothing**: balance, allowance use, member use, keys and holds stay as they were;
  an allowed request is charged exactly its cost, from the period's allowance first, then from the
  prepaid balance when the plan allows it. Once a request has passed the subscription's checks, the
  period it is counted in is recorded (a ``period_reset`` entry) even if it is then refused: that
  moves no money and the next request would record the same period. (The per-day usage counters are
  statistics, not money, and are left out of this model.)
- **Every amount stays within ``CAP``**, a bound every step represents exactly (Lua numbers are doubles):
  a grant that would take the balance past it is refused.
- **Idempotency**: a charge's key belongs to the consumer (the pool member, or the account itself) and
  is bound to route and cost; it answers for that charge and charges nothing more, and only while the
  request would still be allowed: a replay passes the subscription's checks and the member's cap as a
  request that adds nothing (the member's use must still fit under its cap), and otherwise is refused
  with that reason, charges nothing and keeps the key. A grant's or adjustment's key applies once, and
  sent for another kind or amount changes nothing (reused). A refusal records no key.
- **Holds and settlements**: any charge may be settled (lowered) or refunded once, within its window,
  and a hold only until its ``settle_by``, however many ledger entries are kept. What is given back
  goes where it came from: to the balance up to what the balance paid, the rest to the allowance of
  the period the charge was counted in while that is still the current period.
- **The period's counters** (``period_requests``, ``period_from_balance``; the allowance's part is
  ``used``) count each allowed charge, a cost of 0 included, and reset with ``used``; a settlement
  nets them while the charge's period is current (a refund takes its request back), never below 0.
  Each is held at ``CAP``. A pool member's requests are counted per period beside its use.
- **A member's use belongs to one period**, named by the restart count and the period's start
  (``member_period``): a restart between two periods with the same start (a plan without periods,
  another plan, one without periods again) starts the member's use and requests over too.
- **Restarts are counted** (``restarts``): a charge records the count, and settling gives nothing
  back to an allowance restarted since, even when the two periods have the same bounds.
- **The ledger** records every change of the balance; ``ledger_base`` plus the amounts of the entries
  still kept equals the balance, and each entry's ``balance`` is the running balance.
- **Debt is paid first, and refuses every request while it is open.** ``debt`` is what a payment's
  reversal took that the balance could not cover (the payments' scripts write it, as ``frozen`` and
  ``grace_until``). A positive credit pays the debt first and adds only the rest to the balance (its
  ledger entry's amount is that rest, the balance's change); a negative one never creates debt. While
  ``debt`` > 0 a request that passes the subscription's checks is refused (``debt_outstanding``),
  before its period is recorded, a replay too (its key is kept). A ``past_due`` subscription is
  charged like an active one while ``now`` < ``grace_until``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from creditgate.core.model import MAX_CREDITS
from creditgate.core.periods import (
    Period,
    Window,
    window_at,
)

# The bound on every balance, allowance and total: well below 2**53, so a Lua double holds it exactly.
CAP = MAX_CREDITS
CHARGEABLE = ("active", "trialing")
GRACED = "past_due"  # chargeable while now < grace_until


# The window of the anchor's lattice that holds ``now``, on either side of the anchor: the core's own
# rule, which the Lua scripts twin (an anchor in the future gives the period that ends at it).
lattice_window = window_at


def ledger_bound(retention: int) -> int:
    """The most entries an account's ledger stream holds with ``retention`` > 0: the folding runs on one
    write in many (a slack of a sixteenth of the retention), and one charge may append two entries
    (its period's reset and itself)."""
    return retention + max(retention // 16, 1) + 2


class Refusal(str, enum.Enum):
    """Why the model refuses a charge: the reason codes of the charge script."""

    NO_SUBSCRIPTION = "no_subscription"
    SUBSCRIPTION_INACTIVE = "subscription_inactive"
    SUBSCRIPTION_EXPIRED = "subscription_expired"
    PLAN_NOT_ENTITLED = "plan_not_entitled"
    DEBT_OUTSTANDING = "debt_outstanding"
    MEMBER_CAP_REACHED = "member_cap_reached"
    QUOTA_EXHAUSTED = "quota_exhausted"
    INSUFFICIENT_CREDIT = "insufficient_credit"


@dataclass(frozen=True)
class Terms:
    """A plan's terms as they are copied into the account."""

    plan: str
    period: Period
    allowance: int
    prepaid: bool


@dataclass(frozen=True)
class Entry:
    """One ledger entry: what changed the balance (``amount``, signed) and the balance after it."""

    kind: str
    amount: int
    balance: int


@dataclass
class Charge:
    """An applied charge, as settling needs it."""

    ref: int
    cost: int
    from_balance: int
    at: int
    period_start: int  # the period the allowance part was counted in
    restarts: int  # the account's restart count when it was charged
    settle_by: int  # 0: not a hold
    member: str
    request_key: tuple[str, int, str, str] | None  # (route, cost, key, member)
    settled: bool = False


@dataclass(frozen=True)
class ChargeOutcome:
    allowed: bool
    reason: Refusal | None
    balance: int
    allowance_remaining: int
    from_allowance: int
    from_balance: int
    replayed: bool
    charge: int | None  # the applied (or replayed) charge's ref; None when nothing was charged
    period_start: int
    period_end: int
    member_used: int
    member_cap: int  # -1: no cap
    debt: int = 0


@dataclass(frozen=True)
class CreditOutcome:
    """``outcome``: applied; already (the key was applied before, for this change); reused (the key answers
    for another kind or amount: nothing changed); refused (nothing changed). ``debt_paid`` is what this
    change paid of the debt (0 unless applied), ``debt`` what is owed after it."""

    outcome: str
    balance: int
    entry: int | None  # the ledger entry's position in the history
    debt: int = 0
    debt_paid: int = 0


def pay_debt_first(debt: int, amount: int) -> tuple[int, int]:
    """What a credit of ``amount`` (signed) pays of ``debt``, and what it changes the balance by: a
    positive change pays the debt first, a negative one never touches it."""
    paid = min(debt, amount) if amount > 0 else 0
    return paid, amount - paid


@dataclass(frozen=True)
class SettleOutcome:
    """``outcome``: applied, already, unknown, late, invalid, or cap (the balance would pass CAP)."""

    outcome: str
    given_back: int
    balance: int


@dataclass
class AccountModel:
    """One account (possibly a pool): its subscription, terms, period, balance, members, charges and
    ledger. Every method is one script's rule; a refusal leaves every field as it was."""

    terms: Terms | None = None
    status: str = ""
    starts_at: int = 0
    anchor: int = 0
    expires_at: int = 0
    balance: int = 0
    used: int = 0
    period_start: int = 0  # 0 and 0: no current period (the next charge starts one)
    period_end: int = 0
    period_requests: int = 0
    period_from_balance: int = 0
    restarts: int = 0  # period restarts so far (wraps to 1 after CAP)
    debt: int = 0  # credits owed: every request refused while > 0, paid first by the next credit
    frozen: int = 0  # credits held by open disputes (informational: no rule here reads it)
    grace_until: int = 0  # a past_due subscription is charged while now < grace_until
    caps: dict[str, int] = field(default_factory=dict)
    # member -> (restarts, period start, used) and (restarts, period start, requests)
    member_use: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    member_requests: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    history: list[Entry] = field(default_factory=list)  # every entry ever appended, oldest first
    # grant/adjust key -> (entry position, kind, the amount asked for: the entry's may be less, debt paid)
    credit_keys: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    request_keys: dict[tuple[str, int, str, str], int] = field(default_factory=dict)  # -> charge ref
    charges: dict[int, Charge] = field(default_factory=dict)
    cap: int = CAP

    @property
    def exists(self) -> bool:
        return self.terms is not None or bool(self.history) or bool(self.credit_keys)

    # The ledger

    def _append(self, kind: str, amount: int) -> int:
        self.balance += amount
        self.history.append(Entry(kind, amount, self.balance))
        return len(self.history) - 1

    def replay(self) -> int:
        """What the whole history adds up to: always the balance."""
        return sum(e.amount for e in self.history)

    # Subscriptions and terms

    def member_period(self) -> tuple[int, int]:
        """The current period as a member's use names it: (restart count, period start)."""
        return self.restarts, self.period_start

    def _member_count(self, counts: dict[str, tuple[int, int, int]], member: str) -> int:
        """A member's count in the current period; 0 when what it holds is another period's."""
        restarts, start, n = counts.get(member, (-1, -1, 0))
        return n if (restarts, start) == self.member_period() else 0

    def _restart_period(self) -> None:
        self._new_period(0, 0)
        self.restarts = self.restarts + 1 if self.restarts < self.cap else 1

    def _new_period(self, start: int, end: int) -> None:
        self.used, self.period_start, self.period_end = 0, start, end
        self.period_requests, self.period_from_balance = 0, 0

    def subscribe(self, terms: Terms, status: str, starts_at: int, anchor: int, expires_at: int) -> str:
        """Set the subscription and copy the plan's terms. The period's use is kept (switching plans
        back and forth gains nothing) unless the anchor or the period's length changes."""
        previous = self.terms
        restart = previous is None or self.anchor != anchor or previous.period is not terms.period
        self.terms, self.status = terms, status
        self.starts_at, self.anchor, self.expires_at = starts_at, anchor, expires_at
        if restart:
            self._restart_period()
        return previous.plan if previous else ""

    def _write_terms(self, terms: Terms) -> None:
        assert self.terms is not None
        restart = self.terms.period is not terms.period
        self.terms = terms
        if restart:
            self._restart_period()

    def change_plan(self, terms: Terms) -> str:
        """Another plan for a subscribed account ("" and nothing written when it has none)."""
        if self.terms is None:
            return ""
        previous = self.terms.plan
        self._write_terms(terms)
        return previous

    def sync_terms(self, terms: Terms) -> bool:
        """A plan's new terms reach an account still on that plan."""
        if self.terms is None or self.terms.plan != terms.plan or self.terms == terms:
            return False
        self._write_terms(terms)
        return True

    def set_status(self, status: str) -> str:
        if self.terms is None:
            return ""
        previous, self.status = self.status, status
        return previous

    def set_member_cap(self, member: str, cap: int | None) -> None:
        if cap is None:
            self.caps.pop(member, None)
        else:
            self.caps[member] = cap

    # Credits

    def grant(self, amount: int, key: str = "") -> CreditOutcome:
        """Add ``amount`` (1..CAP) once per key; refused when the balance would pass ``cap``."""
        return self._credit("grant", amount, key)

    def adjust_down(self, amount: int, key: str = "") -> CreditOutcome:
        """Take ``amount`` away once per key; refused when the balance would go below zero."""
        return self._credit("adjust", -amount, key)

    def _credit(self, kind: str, amount: int, key: str) -> CreditOutcome:
        if key and key in self.credit_keys:
            first, first_kind, first_amount = self.credit_keys[key]
            if first_kind != kind or first_amount != amount:  # the key answers for another change
                return CreditOutcome("reused", self.balance, first, self.debt)
            return CreditOutcome("already", self.balance, first, self.debt)
        paid, change = pay_debt_first(self.debt, amount)
        if not 0 <= self.balance + change <= self.cap:
            return CreditOutcome("refused", self.balance, None, self.debt)
        self.debt -= paid
        position = self._append(kind, change)
        if key:
            self.credit_keys[key] = (position, kind, amount)
        return CreditOutcome("applied", self.balance, position, self.debt, paid)

    def owe(self, debt: int | None = None, frozen: int | None = None) -> None:
        """What a payment's reversal leaves (the payments' scripts write these fields); None: as it was."""
        if debt is not None:
            self.debt = debt
        if frozen is not None:
            self.frozen = frozen

    def set_grace(self, grace_until: int) -> None:
        """What the subscription lifecycle writes when a subscription falls past due."""
        self.grace_until = grace_until

    # The charge

    def current_window(self, now: int) -> Window:
        """The period a charge at ``now`` is counted in: the current one, unless ``now`` is at or past
        its end (then the lattice window of ``now``); never an earlier one."""
        assert self.terms is not None
        if self.terms.period is Period.NONE:
            return Window(self.period_start, self.period_end)
        if self.period_end == 0 or now >= self.period_end:
            return lattice_window(self.terms.period, self.anchor, now)
        return Window(self.period_start, self.period_end)

    def charge(
        self,
        now: int,
        cost: int,
        *,
        entitled: tuple[str, ...] = (),
        route: str = "global",
        key: str = "",
        member: str = "",
        hold_seconds: int = 0,
    ) -> ChargeOutcome:
        """Decide one request and charge it, all or nothing."""
        request_key = (route, cost, key, member) if key else None
        member_cap = self.caps.get(member, -1) if member else -1  # reported with every answer
        earlier = self.request_keys.get(request_key) if request_key is not None else None
        terms = self.terms
        refusal = self._subscription_refusal(now, entitled)
        if refusal is not None or terms is None:
            return self._answer(False, refusal or Refusal.NO_SUBSCRIPTION, member_cap=member_cap)

        window = self.current_window(now)
        if window.start != self.period_start or window.end != self.period_end:
            self._new_period(window.start, window.end)
            self._append("period_reset", 0)
        member_used = self._member_count(self.member_use, member) if member else 0
        adds = 0 if earlier is not None else cost  # a replay adds nothing to the member's use
        if (member_cap >= 0 and member_used + adds > member_cap) or member_used + adds > self.cap:
            return self._answer(
                False, Refusal.MEMBER_CAP_REACHED, member_used=member_used, member_cap=member_cap
            )
        if earlier is not None:  # still allowed: answered with the first charge, charged nothing
            return self._answer(
                True, None, replayed=True, charge=earlier, member_used=member_used, member_cap=member_cap
            )

        from_allowance = min(cost, max(terms.allowance - self.used, 0))
        from_balance = cost - from_allowance
        refusal = None
        if from_balance > 0 and not terms.prepaid:
            refusal = Refusal.QUOTA_EXHAUSTED
        elif from_balance > self.balance:
            refusal = Refusal.INSUFFICIENT_CREDIT
        if refusal is not None:
            return self._answer(False, refusal, member_used=member_used, member_cap=member_cap)

        # Allowed: from here on, money moves.
        self.period_requests = min(self.period_requests + 1, self.cap)
        self.period_from_balance = min(self.period_from_balance + from_balance, self.cap)
        if member:
            count = self._member_count(self.member_requests, member)
            self.member_requests[member] = (*self.member_period(), min(count + 1, self.cap))
        if cost == 0:
            return self._answer(True, None, member_used=member_used, member_cap=member_cap)
        self.used += from_allowance
        self._append("charge", -from_balance)
        if member:
            member_used += cost
            self.member_use[member] = (*self.member_period(), member_used)
        ref = len(self.charges)
        self.charges[ref] = Charge(
            ref=ref,
            cost=cost,
            from_balance=from_balance,
            at=now,
            period_start=window.start,
            restarts=self.restarts,
            settle_by=now + hold_seconds if hold_seconds > 0 else 0,
            member=member,
            request_key=request_key,
        )
        if request_key is not None:
            self.request_keys[request_key] = ref
        return self._answer(
            True,
            None,
            from_allowance=from_allowance,
            from_balance=from_balance,
            charge=ref,
            member_used=member_used,
            member_cap=member_cap,
        )

    def _subscription_refusal(self, now: int, entitled: tuple[str, ...]) -> Refusal | None:
        """Whether the account lets a request through at ``now`` at all: its subscription, the route's
        entitlement and its debt (the checks a replay passes too)."""
        if self.terms is None:
            return Refusal.NO_SUBSCRIPTION
        graced = self.status == GRACED and now < self.grace_until
        if (self.status not in CHARGEABLE and not graced) or now < self.starts_at:
            return Refusal.SUBSCRIPTION_INACTIVE
        if self.expires_at > 0 and now >= self.expires_at:
            return Refusal.SUBSCRIPTION_EXPIRED
        if entitled and self.terms.plan not in entitled:
            return Refusal.PLAN_NOT_ENTITLED
        if self.debt > 0:
            return Refusal.DEBT_OUTSTANDING
        return None

    def _answer(
        self,
        allowed: bool,
        reason: Refusal | None,
        *,
        from_allowance: int = 0,
        from_balance: int = 0,
        replayed: bool = False,
        charge: int | None = None,
        member_used: int = 0,
        member_cap: int = -1,
    ) -> ChargeOutcome:
        used, window = self.used, Window(self.period_start, self.period_end)
        allowance = self.terms.allowance if self.terms else 0
        return ChargeOutcome(
            allowed=allowed,
            reason=reason,
            balance=self.balance,
            allowance_remaining=max(allowance - used, 0),
            from_allowance=from_allowance,
            from_balance=from_balance,
            replayed=replayed,
            charge=charge,
            period_start=window.start,
            period_end=window.end,
            member_used=member_used,
            member_cap=member_cap,
            debt=self.debt,
        )

    # Settlement

    def settle(
        self, ref: int | None, final_cost: int, now: int, *, window: int, refund: bool
    ) -> SettleOutcome:
        """Lower charge ``ref`` to ``final_cost`` (a refund: to 0), at most once, within ``window``
        seconds of the charge (a hold: also by its ``settle_by``)."""
        charge = self.charges.get(ref) if ref is not None else None
        if charge is None:
            return SettleOutcome("unknown", 0, self.balance)
        if charge.settled:
            return SettleOutcome("already", 0, self.balance)
        if not 0 <= final_cost <= charge.cost:
            return SettleOutcome("invalid", 0, self.balance)
        if (not refund and charge.settle_by > 0 and now > charge.settle_by) or now > charge.at + window:
            return SettleOutcome("late", 0, self.balance)
        give_back = charge.cost - final_cost
        to_balance = min(give_back, charge.from_balance)
        debt_paid, to_balance_now = pay_debt_first(self.debt, to_balance)
        if self.balance + to_balance_now > self.cap:
            return SettleOutcome("cap", 0, self.balance)
        # A period restarted since the charge (a new subscription, anchor or length: bounds 0 until the
        # next charge) is another period, even when the charge's period also started at 0 (a plan
        # without periods). A plan without periods has one period, from its last restart.
        # The restart count tells apart periods whose bounds are the same (a plan without periods, then
        # another plan, then one without periods again: both start at 0).
        in_period = (
            self.terms is not None
            and charge.restarts == self.restarts
            and charge.period_start == self.period_start
            and (self.terms.period is Period.NONE or self.period_end != 0)
        )
        to_allowance = give_back - to_balance if in_period else 0
        self.used = max(self.used - to_allowance, 0)
        if in_period:
            self.period_from_balance = max(self.period_from_balance - to_balance, 0)
            if refund:
                self.period_requests = max(self.period_requests - 1, 0)
        if charge.member and in_period and give_back > 0:
            # Only a use of the current period (restart count and start) is the charge's to lower.
            member_used = self._member_count(self.member_use, charge.member)
            if member_used > 0:
                self.member_use[charge.member] = (*self.member_period(), max(member_used - give_back, 0))
            count = self._member_count(self.member_requests, charge.member)
            if refund and count > 0:
                self.member_requests[charge.member] = (*self.member_period(), count - 1)
        if refund and charge.request_key is not None:
            self.request_keys.pop(charge.request_key, None)
        self.debt -= debt_paid
        self._append("refund" if refund else "settle", to_balance_now)
        charge.settled = True
        return SettleOutcome("applied", to_balance + to_allowance, self.balance)

    def copy(self) -> AccountModel:
        """An independent copy (the tests check that a refusal changed nothing)."""
        return replace(
            self,
            caps=dict(self.caps),
            member_use=dict(self.member_use),
            member_requests=dict(self.member_requests),
            history=list(self.history),
            credit_keys=dict(self.credit_keys),
            request_keys=dict(self.request_keys),
            charges={ref: replace(c) for ref, c in self.charges.items()},
        )
