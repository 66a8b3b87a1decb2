"""credit.lua's idempotency keys against a real Redis: a key answers for one change, and for no other.

A key's record remembers what its first request did (kind and signed amount); a replay answers with it,
a reuse for another change is refused by the script with nothing written. Operators' keys (the HTTP API,
the CLI) live apart from the keys of webhooks and payments, also across an upgrade from records that hold
a bare ledger id.
"""

from __future__ import annotations

import pytest
import redis

from creditgate.core.model import Plan
from creditgate.errors import IdempotencyKeyReused, StoreDataError
from creditgate.ops.admin import OPERATOR_KEYS, PAYMENT_KEYS, Admin
from creditgate.store.replies import as_text
from creditgate.store.store import RedisStore
from tests.money_support import dump_keys

ACME_KEYS = "credit-gate:{acme}:*"


@pytest.fixture
def acme(admin: Admin) -> Admin:
    admin.apply_plan(Plan("pro"))
    admin.subscribe("acme", "pro")
    return admin


def records(store: RedisStore) -> dict[str, str]:
    raw = store.client.hgetall(store.keys.account("acme").idempotency)
    return {as_text(k): as_text(v) for k, v in raw.items()}


def as_before_namespaces(store: RedisStore, key: str) -> None:
    """Rewrite a record as versions before this one wrote it: the bare ledger id."""
    name = store.keys.account("acme").idempotency
    ledger_id = records(store)[key].split(" ")[0]
    store.client.hset(name, key, ledger_id)


def test_a_replay_answers_what_the_first_request_did(acme: Admin, store: RedisStore) -> None:
    first = acme.grant("acme", 500, idempotency_key="in_1")
    again = acme.grant("acme", 500, idempotency_key="in_1")
    assert first.applied and not again.applied
    assert (again.ledger_id, again.amount, again.balance) == (first.ledger_id, 500, 500)
    assert len(list(store.ledger("acme"))) == 1


def test_a_key_reused_with_another_amount_is_refused_and_changes_nothing(
    acme: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    first = acme.grant("acme", 500, idempotency_key="in_1")
    before = dump_keys(redis_client, ACME_KEYS)
    with pytest.raises(IdempotencyKeyReused) as refused:
        acme.grant("acme", 300, idempotency_key="in_1")
    assert (refused.value.first_kind, refused.value.first_amount) == ("grant", 500)
    assert refused.value.first_ledger_id == first.ledger_id
    assert "in_1" in str(refused.value) and "500" in str(refused.value)
    assert dump_keys(redis_client, ACME_KEYS) == before


def test_a_key_reused_for_another_kind_of_change_is_refused(acme: Admin, store: RedisStore) -> None:
    acme.grant("acme", 500, idempotency_key="k")
    with pytest.raises(IdempotencyKeyReused):
        acme.adjust_down("acme", 500, idempotency_key="k")
    assert store.account_state("acme").balance == 500


def test_an_operator_key_named_like_a_webhook_key_does_not_swallow_the_webhook(
    acme: Admin, store: RedisStore
) -> None:
    acme.grant("acme", 100, idempotency_key="webhook:inv-42", key_namespace=OPERATOR_KEYS)
    paid = acme.grant(
        "acme", 500, idempotency_key="webhook:inv-42", key_namespace=PAYMENT_KEYS
    )  # as service/webhooks.py calls it
    assert paid.applied and store.account_state("acme").balance == 600


def test_a_webhook_key_does_not_swallow_an_operator_key_of_the_same_name(
    acme: Admin, store: RedisStore
) -> None:
    acme.grant("acme", 500, idempotency_key="stripe:invoice:in_9", key_namespace=PAYMENT_KEYS)
    operator = acme.grant("acme", 100, idempotency_key="stripe:invoice:in_9", key_namespace=OPERATOR_KEYS)
    assert operator.applied and store.account_state("acme").balance == 600
    assert set(records(store)) == {"stripe:invoice:in_9", "api:stripe:invoice:in_9"}


def test_an_operator_retry_of_a_write_made_before_namespaces_is_not_applied_again(
    acme: Admin, store: RedisStore
) -> None:
    first = acme.grant("acme", 500, idempotency_key="in_1", key_namespace=PAYMENT_KEYS)
    as_before_namespaces(store, "in_1")
    again = acme.grant("acme", 500, idempotency_key="in_1", key_namespace=OPERATOR_KEYS)
    assert not again.applied and (again.ledger_id, again.amount) == (first.ledger_id, 500)
    with pytest.raises(IdempotencyKeyReused):
        acme.grant("acme", 300, idempotency_key="in_1", key_namespace=OPERATOR_KEYS)
    assert store.account_state("acme").balance == 500


def test_an_old_operator_record_named_like_a_webhook_key_refuses_another_amount_rather_than_swallow_it(
    acme: Admin, store: RedisStore
) -> None:
    acme.grant(
        "acme", 100, idempotency_key="webhook:inv-42", key_namespace=PAYMENT_KEYS
    )  # before namespaces: stored as given
    as_before_namespaces(store, "webhook:inv-42")
    with pytest.raises(IdempotencyKeyReused):
        acme.grant("acme", 500, idempotency_key="webhook:inv-42", key_namespace=PAYMENT_KEYS)
    assert store.account_state("acme").balance == 100


def test_a_record_from_before_namespaces_is_not_taken_for_an_operators_after_the_upgrade(
    acme: Admin, store: RedisStore
) -> None:
    acme.grant(
        "acme", 500, idempotency_key="webhook:inv-42", key_namespace=PAYMENT_KEYS
    )  # written by this version: a payment's
    operator = acme.grant("acme", 100, idempotency_key="webhook:inv-42", key_namespace=OPERATOR_KEYS)
    assert operator.applied and store.account_state("acme").balance == 600


def test_an_old_record_whose_ledger_entry_is_gone_answers_as_a_replay_and_applies_nothing(
    acme: Admin, store: RedisStore
) -> None:
    acme.grant("acme", 500, idempotency_key="other")
    store.client.hset(store.keys.account("acme").idempotency, "in_1", "1-0")  # folded away long ago
    again = acme.grant("acme", 300, idempotency_key="in_1", key_namespace=OPERATOR_KEYS)
    assert not again.applied and again.ledger_id == "1-0"
    assert store.account_state("acme").balance == 500


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        "",
        "1-0 grant",
        "1-0 gift 5",
        "1-0 grant 1e3",
        "1-0 grant 0",
        "1-0 grant 10000000000000001",
        "1-0 grant 5 extra",
        "99999999999999999999999-0",
        "x-0 grant 5",
    ],
)
def test_a_garbled_record_is_bad_data_and_nothing_is_written(
    acme: Admin, store: RedisStore, redis_client: redis.Redis, value: str
) -> None:
    acme.grant("acme", 500, idempotency_key="seed")
    store.client.hset(store.keys.account("acme").idempotency, "in_1", value)
    before = dump_keys(redis_client, ACME_KEYS)
    with pytest.raises(StoreDataError):
        acme.grant("acme", 500, idempotency_key="in_1", key_namespace=PAYMENT_KEYS)
    with pytest.raises(StoreDataError):
        acme.grant("acme", 500, idempotency_key="in_1", key_namespace=OPERATOR_KEYS)
    assert dump_keys(redis_client, ACME_KEYS) == before
