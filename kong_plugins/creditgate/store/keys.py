"""Every Redis key credit-gate uses, in one place.

All keys of one account share the hash tag ``{<account>}`` so that each script touches a single Redis
Cluster slot. Account names are percent-encoded inside the tag: a name containing ``{``, ``}``, ``:``
or ``%`` can neither break the tag nor collide with another account's keys. A name longer than
``READABLE_NAME`` characters (which Kong allows: a username has no limit) is tagged by its SHA-256
instead, ``#<hex>``, so that keys stay bounded; ``#`` never appears in an encoded name, so the two
forms cannot meet. The full name is kept where names are listed (``accounts``, ``plan:<name>:accounts``).

    <prefix>:{<account>}:account        hash: subscription, plan terms, balance, period usage
    <prefix>:{<account>}:ledger         stream: every change of the account's credit
    <prefix>:{<account>}:keys           hash: idempotency key -> ledger id
    <prefix>:{<account>}:usage:<day>    hash: "<route>|requests|credits|refused" -> count, per UTC day
    <prefix>:{<account>}:members        hash: pool members' caps and period use
    <prefix>:{<account>}:holds          hash: charge id -> what settling it needs (JSON), for its window
    <prefix>:{<account>}:holds:until    sorted set: charge id by the end of its settlement window
    <prefix>:{<account>}:request:<hash> string: the charge a consumer's Idempotency-Key answered with
                                        (hash of consumer, route, cost and key: replies.py)
    <prefix>:{<account>}:settled:<id>   string: the settlement of charge <id> (settled at most once)
    <prefix>:{<account>}:token:<token>  string: the ledger id of the charge sent with <token> (minutes)
    <prefix>:{<account>}:void:<token>   string: the charge sent with <token> was voided (store/voids.py)
    <prefix>:{<account>}:payments       hash: payment key -> the payment, its reversals and what they moved
                                        (JSON; store/payments.py)
    <prefix>:{<account>}:events         stream: threshold events the charge script raised (the charge
                                        script derives the name from the account hash's)
    <prefix>:plan:<name>                string: the plan's JSON document
    <prefix>:plans                      set: plan names
    <prefix>:plan:<name>:accounts       set: accounts subscribed to the plan (moved by the script that
                                        changes the plan; on a Cluster by the store, see plan_index.py)
    <prefix>:accounts                   set: every account the operators created
    <prefix>:events:accounts            set: accounts with alerts set (whose events the service delivers)
    <prefix>:events:cursors             hash: account -> id of the last event delivered (or dead-lettered)
    <prefix>:events:dead                hash: dead letter id -> the event and receiver that gave up (JSON)
    <prefix>:{<prefix>:events:dead}:order  sorted set: each dead letter's place, "<dead_at>_<id>", all
                                        scored 0 (read by lex: store/events.py); tagged with the hash's
                                        whole name, so that a MULTI writes both on a Cluster
    <prefix>:stripe:payments            hash: the version before's payment records (read, never written)
    <prefix>:{stripe}:ref:<reference>   string: a payment reference -> the payment's canonical key
    <prefix>:{stripe}:owner:<key>       string: a payment -> the account it paid for
    <prefix>:{stripe}:waiting:<key>     string: reversals of a payment not yet owned, and its references
                                        (JSON; kept 30 days while nobody owns the payment)
    <prefix>:{totals}:totals:<day>      hash: "<route>|<field>" -> count over every account, per UTC day,
                                        kept by the charge and settle scripts beside each account's usage
                                        (on a Cluster, <prefix>:{<slot tag>}:totals:<day> per slot, folded
                                        into these once the day is over: store/totals.py); with
                                        <day>:accounts (sorted set: account -> credits charged) and
                                        <day>:active (HyperLogLog of the accounts counted)
    <prefix>:{totals}:totals            hash: from (the first day counted whole), built:<day>
    <prefix>:store                      string: "this Redis holds credit-gate's data" (standalone,
                                        Sentinel); on a Cluster one such key per slot,
                                        <prefix>:{<slot tag>}:store, so that a charge reads the one
                                        of its account's slot
    <prefix>:{nodes}:node:<node id>     hash: a plugin server store's report (store/nodes.py)
    <prefix>:{nodes}:nodes              set: the node ids that reported
"""

from __future__ import annotations

import binascii
import datetime as dt
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

SAFE = "-._~@+="

# A charge's void (store/voids.py) is tried this long; its token key (charge.lua) outlives that.
VOID_SECONDS = 300
TOKEN_SECONDS = VOID_SECONDS + 60


# Names up to this length keep a readable tag (every name was at most this long before longer ones were
# accepted, so existing keys do not move).
READABLE_NAME = 256


def account_tag(account: str) -> str:
    if len(account) > READABLE_NAME:
        return "#" + hashlib.sha256(account.encode("utf-8", "surrogatepass")).hexdigest()
    return quote(account, safe=SAFE)


@lru_cache(maxsize=512)  # the hot path asks for today's name on every request; reports for 400 days
def _day_name(day: int) -> str:
    return dt.datetime.fromtimestamp(day * 86_400, dt.timezone.utc).strftime("%Y%m%d")


@dataclass(frozen=True)
class AccountKeys:
    state: str
    ledger: str
    idempotency: str
    usage_prefix: str
    members: str
    base: str
    holds: str = ""
    holds_index: str = ""

    def usage(self, epoch: int) -> str:
        return self.usage_prefix + _day_name(epoch // 86_400)

    def request(self, idempotency_key: str) -> str:
        """The key of a client's Idempotency-Key, hashed: any value the client sends makes a safe name."""
        digest = hashlib.sha256(idempotency_key.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        return f"{self.base}request:{digest}"

    def settled(self, charge_id: str) -> str:
        return f"{self.base}settled:{charge_id}"

    def token(self, token: str) -> str:
        """A charge's token: its ledger id once charged (charge.lua derives the name from ``state``)."""
        return f"{self.base}token:{token}"

    def void(self, token: str) -> str:
        """A voided charge's marker: charge.lua refuses its token (store/voids.py)."""
        return f"{self.base}void:{token}"

    @property
    def payments(self) -> str:
        """The account's payments: payment key -> its record (store/payments.py, payment.lua)."""
        return f"{self.base}payments"

    @property
    def events(self) -> str:
        """Written by charge.lua as ``state`` with its last word replaced (see _lib.lua)."""
        return f"{self.base}events"


@dataclass(frozen=True)
class Keys:
    prefix: str

    def account(self, account: str) -> AccountKeys:
        return account_keys(self.prefix, account)

    def plan(self, name: str) -> str:
        return f"{self.prefix}:plan:{name}"

    def plan_accounts(self, name: str) -> str:
        return f"{self.prefix}:plan:{name}:accounts"

    @property
    def plan_accounts_parts(self) -> tuple[str, str]:
        """``plan_accounts(name)`` as the text before and after the name: the scripts that move an
        account between plans name the set of the plan they read from the account's hash."""
        return f"{self.prefix}:plan:", ":accounts"

    @property
    def plans(self) -> str:
        return f"{self.prefix}:plans"

    @property
    def accounts(self) -> str:
        return f"{self.prefix}:accounts"

    @property
    def store(self) -> str:
        return f"{self.prefix}:store"

    @property
    def event_accounts(self) -> str:
        return f"{self.prefix}:events:accounts"

    @property
    def event_cursors(self) -> str:
        return f"{self.prefix}:events:cursors"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}:events:dead"

    @property
    def dead_letter_order(self) -> str:
        """In the Cluster slot of ``dead_letters`` (an untagged name's slot is its whole name's) and under
        the prefix (the ACL's ``~<prefix>:*``)."""
        return f"{self.prefix}:{{{self.dead_letters}}}:order"

    @property
    def stripe_payments(self) -> str:
        """The version before's payment records (read only, see store/payments.py)."""
        return f"{self.prefix}:stripe:payments"

    # The payments' references, in one Cluster slot (payment_route.lua derives the keys from these heads).
    @property
    def payment_refs(self) -> str:
        return f"{self.prefix}:{{stripe}}:ref:"

    @property
    def payment_owners(self) -> str:
        return f"{self.prefix}:{{stripe}}:owner:"

    @property
    def payment_waiting(self) -> str:
        return f"{self.prefix}:{{stripe}}:waiting:"


@lru_cache(maxsize=16_384)  # names are pure functions of (prefix, account): build each once
def account_keys(prefix: str, account: str) -> AccountKeys:
    base = f"{prefix}:{{{account_tag(account)}}}:"
    return AccountKeys(
        base + "account",
        base + "ledger",
        base + "keys",
        base + "usage:",
        base + "members",
        base,
        base + "holds",
        base + "holds:until",
    )


CLUSTER_SLOTS = 16_384


@lru_cache(maxsize=1)
def slot_tags() -> tuple[str, ...]:
    """For each Redis Cluster slot, a short hash tag that maps to it (built once, in about 0.3 s)."""
    tags: list[str | None] = [None] * CLUSTER_SLOTS
    left, i = CLUSTER_SLOTS, 0
    while left:
        tag = format(i, "x")
        slot = binascii.crc_hqx(tag.encode(), 0) % CLUSTER_SLOTS
        if tags[slot] is None:
            tags[slot] = tag
            left -= 1
        i += 1
    return tuple(t for t in tags if t is not None)


def _slot_tag_of(account: str) -> str:
    return slot_tags()[binascii.crc_hqx(account_tag(account).encode(), 0) % CLUSTER_SLOTS]


def slot_marker(prefix: str, account: str) -> str:
    """The store marker on the Cluster slot of ``account``'s keys."""
    return f"{prefix}:{{{_slot_tag_of(account)}}}:store"


def day_name(epoch: int) -> str:
    """The UTC day of ``epoch`` as keys name it, YYYYMMDD."""
    return _day_name(epoch // 86_400)


def totals_prefix(prefix: str) -> str:
    """The day's totals over every account, ``<this>YYYYMMDD`` (store/totals.py). On one server the
    scripts count into them directly; on a Cluster they are folded from the slots' own."""
    return f"{prefix}:{{totals}}:totals:"


def slot_totals_prefix(prefix: str, account: str) -> str:
    """The day's totals of the accounts of ``account``'s Cluster slot, which its scripts can write."""
    return f"{prefix}:{{{_slot_tag_of(account)}}}:totals:"


def slot_totals_prefixes(prefix: str) -> list[str]:
    """Every slot's ``slot_totals_prefix``, for folding a Cluster's day."""
    return [f"{prefix}:{{{tag}}}:totals:" for tag in slot_tags()]


def totals_meta(prefix: str) -> str:
    """What the totals hold (store/totals.py): ``from``, the first day the scripts counted whole, and
    ``built:YYYYMMDD`` for each earlier or folded day made whole since."""
    return f"{prefix}:{{totals}}:totals"


def node_key(prefix: str, node: str) -> str:
    """A node's report: the ``{nodes}`` hash tag keeps reports in one Cluster slot, away from accounts'."""
    return f"{prefix}:{{nodes}}:node:{node}"


def nodes_key(prefix: str) -> str:
    return f"{prefix}:{{nodes}}:nodes"


def store_markers(prefix: str) -> list[str]:
    """Every slot's marker, for a Cluster."""
    return [f"{prefix}:{{{tag}}}:store" for tag in slot_tags()]
