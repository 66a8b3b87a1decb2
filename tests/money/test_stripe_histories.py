"""Generated Stripe histories, signed and sent through the real ``credit-gate serve`` to a real Redis.

Each example is one account's payments: one-off Checkout sessions and subscription invoices of both API
shapes (a basil invoice names no PaymentIntent: its ``invoice_payment.paid`` joins them), with partial
refunds moving through their statuses, refunded totals of charges whose refunds are not listed, disputes
at every stage (inquiries, open, won, lost, appealed), and the operator spending credits. Every
payment's events are shuffled with the others', some sent twice, reversals often before their payment.
After every event the service answered 200 and:

- per payment, credits taken back and held are exactly ``core.payments``'s shares of what was paid and
  reversed (the plain model, fed every event the payment has received so far);
- the account's balance minus its debt is what was bought, less what was taken back and held, less
  what was spent; balance and debt are never both above 0; frozen credits are what is held;
- the ledger adds up to the balance.

``STRIPE_HISTORY_EXAMPLES`` sets the number of examples (a long run: ``STRIPE_HISTORY_EXAMPLES=2000``);
the test prints the events it checked.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import stripe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creditgate.core import payments as rules
from creditgate.core.config import RedisSettings
from creditgate.core.payments import DISPUTE, REFUND, REFUNDED_TOTAL, Rate, Reversal
from creditgate.ops.admin import Admin
from creditgate.store import payments
from creditgate.store.replies import as_text
from creditgate.store.store import RedisStore
from tests.service import stripe_payloads as sp
from tests.service_support import ADMIN_TOKEN, Running, running_service

pytestmark = pytest.mark.server

SECRET = "whsec_histories_0123456789"
RATE = Rate(credits=7, amount=3, currency="usd")  # an odd rate: every share is rounded
EXAMPLES = int(os.environ.get("STRIPE_HISTORY_EXAMPLES", "150"))
CHECKED = {"events": 0, "examples": 0}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Iterator[tuple[Running, Admin]]:
    billing = tmp_path_factory.mktemp("billing") / "billing.yaml"
    billing.write_text(
        json.dumps(
            {
                "credits": {"price_credits": {"credits": 7, "amount": 3, "currency": "usd"}},
                "refunds": True,
            }
        )
    )
    settings_ = RedisSettings(host="127.0.0.1", port=redis_server.port)
    env = {"CREDIT_GATE_ADMIN_TOKENS": ADMIN_TOKEN, "CREDIT_GATE_STRIPE_WEBHOOK_SECRET": SECRET}
    with running_service(settings_, environ=env, billing_map=billing) as running:
        running.call("POST", "/v1/plans", json={"name": "pro", "allowance": 0})
        admin = Admin(RedisStore.from_settings(settings_))
        yield running, admin
        admin.close()
    print(f"\nStripe histories: {CHECKED['events']} events checked in {CHECKED['examples']} examples")


def send(api: Running, event: dict[str, Any]) -> dict[str, Any]:
    payload = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(payload, SECRET, timestamp=int(time.time()))
    answer = api.call(
        "POST",
        "/v1/webhooks/stripe",
        token=None,
        data=payload.encode(),
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


@dataclass
class ModelPayment:
    """What the model knows of one payment: whether its payment (and, for a basil invoice, its link to
    the PaymentIntent) arrived, and every reversal event it was sent."""

    ref: str  # the reference its refunds and disputes name (the PaymentIntent)
    paid: int
    credits: int
    paid_seen: bool = False
    linked: bool = True
    reversals: list[Reversal] = field(default_factory=list)

    def state(self) -> rules.Payment:
        """The payment as the ledger should hold it: granted once paid; its reversals reach it once its
        references are joined (a basil invoice's, by its invoice_payment.paid)."""
        payment = rules.Payment(self.ref)
        if self.paid_seen:
            reversals = self.reversals if self.linked else []
            rules.apply_event(
                rules.Account(), payment, pay=(self.paid, "usd", self.credits), reversals=reversals
            )
        return payment


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[int, str, dict[str, Any] | int, Reversal | None]]:
    """(payment index, kind, event or amount spent, the reversal it carries) in the order sent."""
    version = draw(st.sampled_from(sp.VERSIONS))
    steps: list[tuple[int, str, Any, Reversal | None]] = []
    clock = sp.CREATED
    for p in range(draw(st.integers(1, 3))):
        paid = draw(st.integers(1, 20_000))
        pi, ch, inv, cs = f"pi_{p}", f"ch_{p}", f"in_{p}", f"cs_{p}"
        flow = draw(st.sampled_from(["checkout", "invoice"]))
        if flow == "checkout":
            steps.append(
                (
                    p,
                    "pay",
                    sp.checkout_session(
                        version, session=cs, amount_total=paid, payment_intent=pi, price="price_credits"
                    ),
                    None,
                )
            )
        else:
            lines = (sp.Line(paid),)
            if sp.is_basil(version):
                steps.append(
                    (
                        p,
                        "pay_unlinked",
                        sp.invoice_paid(version, lines, invoice=inv, payment_intent=None, charge=None),
                        None,
                    )
                )
                steps.append(
                    (
                        p,
                        "link",
                        sp.invoice_payment_paid(version, invoice=inv, payment_intent=pi, amount=paid),
                        None,
                    )
                )
            else:
                steps.append(
                    (
                        p,
                        "pay",
                        sp.invoice_paid(version, lines, invoice=inv, payment_intent=pi, charge=ch),
                        None,
                    )
                )
        for r in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from([REFUND, DISPUTE, REFUNDED_TOTAL]))
            amount = draw(st.integers(1, paid))
            statuses = draw(
                st.lists(st.sampled_from(sorted(rules.RANK.get(kind, {"": 0}))), min_size=1, max_size=3)
            )
            for status in statuses:
                clock += draw(st.integers(0, 2))
                if kind == REFUND:
                    ended = clock if status in rules.REFUND_ENDED else 0
                    reversal = Reversal(f"re_{p}_{r}", REFUND, amount, status, sp.CREATED, ended)
                    message = sp.refund_event(
                        "refund.updated",
                        status,
                        version=version,
                        refund_id=reversal.id,
                        amount=amount,
                        charge=ch,
                        payment_intent=pi,
                        created=clock,
                    )
                elif kind == DISPUTE:
                    reversal = Reversal(f"dp_{p}_{r}", DISPUTE, amount, status, clock)
                    message = sp.dispute_event(
                        "charge.dispute.updated",
                        status,
                        version=version,
                        dispute=reversal.id,
                        amount=amount,
                        charge=ch,
                        payment_intent=pi,
                        created=clock,
                    )
                else:
                    total = min(amount + len(steps) % 3, paid)
                    reversal = Reversal(REFUNDED_TOTAL, REFUNDED_TOTAL, total, "", clock)
                    message = sp.charge_refunded(
                        version,
                        amount=paid,
                        amount_refunded=total,
                        charge=ch,
                        payment_intent=pi,
                        created=clock,
                    )
                steps.append((p, "reverse", message, reversal))
    if draw(st.booleans()):
        steps.append((-1, "spend", draw(st.integers(1, 5_000)), None))
    rng = random.Random(draw(st.integers(0, 2**32)))
    rng.shuffle(steps)
    for _ in range(draw(st.integers(0, 3))):
        steps.insert(rng.randrange(len(steps) + 1), rng.choice(steps))  # sent again
    return steps


def money(admin: Admin, account: str) -> tuple[int, int, int]:
    values = admin.store.client.hmget(admin.store.keys.account(account).state, "balance", "debt", "frozen")
    return tuple(int(as_text(v)) if v is not None else 0 for v in values)  # type: ignore[return-value]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(history=histories())
def test_credits_follow_money_through_any_history(
    service: tuple[Running, Admin], history: list[tuple[int, str, Any, Reversal | None]]
) -> None:
    api, admin = service
    account = f"buyer-{uuid.uuid4().hex[:12]}"  # hypothesis seeds `random`: uuid4 reads the OS
    api.call("PUT", f"/v1/accounts/{account}/subscription", json={"plan": "pro"})
    model: dict[int, ModelPayment] = {}
    spent = 0
    for p, kind, body, reversal in history:
        if kind == "spend":
            if money(admin, account)[0] >= body:
                admin.adjust_down(account, body, note="spent")
                spent += body
            continue
        if p not in model:
            paid = _paid(history, p)
            unlinked = any(q == p and k == "pay_unlinked" for q, k, _, _ in history)
            model[p] = ModelPayment(f"pi_{p}", paid, RATE.credits_for(paid), linked=not unlinked)
        if kind in ("pay", "pay_unlinked"):
            model[p].paid_seen = True
        elif kind == "link":
            model[p].linked = True
        elif reversal is not None:
            model[p].reversals.append(reversal)
        send(api, _for_account(body, account))
        CHECKED["events"] += 1
        _check(admin, account, model, spent)
    CHECKED["examples"] += 1


def _paid(history: list[tuple[int, str, Any, Reversal | None]], p: int) -> int:
    for q, kind, body, _ in history:
        if q == p and kind in ("pay", "pay_unlinked"):
            obj = body["data"]["object"]
            return int(obj.get("amount_total") or obj.get("amount_paid"))
    raise AssertionError("no payment event")


def _for_account(event: dict[str, Any], account: str) -> dict[str, Any]:
    """The event with every id made this example's own and the account in its metadata."""
    text = json.dumps(event)
    for head in ("pi_", "ch_", "in_", "cs_", "re_", "dp_", "inpay_"):
        text = text.replace(f'"{head}', f'"{head}{account}_')
    copy: dict[str, Any] = json.loads(text)
    copy["id"] = f"{copy['id']}_{account}"
    obj = copy["data"]["object"]
    for path in (
        ("metadata",),
        ("parent", "subscription_details", "metadata"),
        ("subscription_details", "metadata"),
    ):
        target = obj
        for name in path[:-1]:
            target = target.get(name) if isinstance(target, dict) else None
        if (
            isinstance(target, dict)
            and isinstance(target.get(path[-1]), dict)
            and sp.ACCOUNT_KEY in target[path[-1]]
        ):
            target[path[-1]][sp.ACCOUNT_KEY] = account
    return copy


def _check(admin: Admin, account: str, model: dict[int, ModelPayment], spent: int) -> None:
    store = admin.store
    bought = taken = held = 0
    for p, expected in model.items():
        state = expected.state()
        ref = as_text(store.client.get(store.keys.payment_refs + f"pi_{account}_{p}") or b"")
        record = payments.payment(store, account, ref) if ref else None
        got = (record.taken, record.held) if record is not None and record.granted else (0, 0)
        assert got == (state.taken, state.held), (p, expected, record)
        if state.granted:
            bought += state.credits
            taken += state.taken
            held += state.held
            gone, _ = rules.reversed_and_held(state.paid, state.reversals)
            assert state.taken == rules.share(state.credits, gone, state.paid)
    balance, debt, frozen = money(admin, account)
    assert balance - debt == bought - taken - held - spent
    assert balance == 0 or debt == 0
    assert frozen == held
    assert admin.verify_ledger(account).ok
