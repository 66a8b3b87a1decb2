"""Ledger entries for a billing system: JSON Lines, CSV, or CloudEvents.

Every entry has a stable, globally unique id, ``<account>/<stream id>``: the account percent-encoded as
in its Redis keys (so ``/`` and ``%`` in a name cannot make two ids equal), and the id Redis gave the
entry in the account's ledger stream, which never changes and is never reused (a stream's ids only
grow, also across trimming). Exporting the same range twice gives the same ids, so a consumer that
de-duplicates by id (OpenMeter does, by CloudEvents ``source`` + ``id``) counts each entry once; overlap
the ranges freely.

Two times: ``time`` is when the gate or the operator made the change (the ``at`` the script was given),
``recorded_at`` is when Redis appended it (the stream id's milliseconds). Ranges select on
``recorded_at``, which only grows within an account, so consecutive ranges never miss an entry.
"""

from __future__ import annotations

import csv
import enum
import json
from collections.abc import Iterable
from typing import Any, TextIO

from creditgate.core.inputs import format_instant, format_millis
from creditgate.store.keys import account_tag
from creditgate.store.replies import LedgerEntry

NUMBERS = (
    "amount",
    "balance",
    "cost",
    "from_allowance",
    "to_allowance",
    "allowance",
    "allowance_used",
    "settle_by",
    "period_restarts",
)
TEXTS = ("plan", "route", "member", "note", "key", "reference", "idempotency_key")
CSV_COLUMNS = (
    "id",
    "account",
    "ledger_id",
    "time",
    "recorded_at",
    "kind",
    "amount",
    "balance",
    "cost",
    "from_allowance",
    "plan",
    "route",
    "note",
    "key",
    "reference",
    "allowance",
    "allowance_used",
    "to_allowance",
    "member",
    "settle_by",
)
CLOUDEVENTS_TYPE = "credit-gate.ledger.{kind}"


class Format(str, enum.Enum):
    JSONL = "jsonl"
    CSV = "csv"
    CLOUDEVENTS = "cloudevents"
    CLOUDEVENTS_BATCH = "cloudevents-batch"


def global_id(entry: LedgerEntry) -> str:
    return f"{account_tag(entry.account)}/{entry.id}"


def record(entry: LedgerEntry) -> dict[str, Any]:
    """An entry as a flat JSON object: numbers as integers, times as RFC 3339 UTC."""
    fields = entry.fields
    out: dict[str, Any] = {
        "id": global_id(entry),
        "account": entry.account,
        "ledger_id": entry.id,
        "time": format_instant(int(fields.get("at") or 0)),
        "recorded_at": format_millis(int(entry.id.split("-", 1)[0])),
        "kind": fields.get("kind", ""),
    }
    for name in NUMBERS:
        if name in fields:
            out[name] = int(fields[name])
    for name in TEXTS:
        if name in fields:
            out[name] = fields[name]
    for name, value in fields.items():  # fields a later version adds are passed on, not dropped
        if name not in out and name != "at":
            out[name] = value
    return out


def cloudevent(entry: LedgerEntry, source: str) -> dict[str, Any]:
    """A CloudEvents 1.0 event in JSON format; ``subject`` is the account, ``data`` the entry."""
    data = record(entry)
    return {
        "specversion": "1.0",
        "id": data.pop("id"),
        "source": source,
        "type": CLOUDEVENTS_TYPE.format(kind=data["kind"]),
        "subject": entry.account,
        "time": data["time"],
        "datacontenttype": "application/json",
        "data": data,
    }


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A text cell a spreadsheet would run as a formula (a note or an account name written by a client)
    gets a leading quote (OWASP's advice for CSV injection); numbers are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write(entries: Iterable[LedgerEntry], fmt: Format, out: TextIO, *, source: str) -> int:
    """Write entries as they come (constant memory, except the batch format); returns how many."""
    count = 0
    if fmt is Format.CSV:
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for entry in entries:
            writer.writerow({k: spreadsheet_safe(v) for k, v in record(entry).items()})
            count += 1
    elif fmt is Format.CLOUDEVENTS_BATCH:
        batch = [cloudevent(entry, source) for entry in entries]
        out.write(json.dumps(batch, separators=(",", ":")) + "\n")
        count = len(batch)
    else:
        for entry in entries:
            line = cloudevent(entry, source) if fmt is Format.CLOUDEVENTS else record(entry)
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
            count += 1
    return count


def default_source(key_prefix: str) -> str:
    """The CloudEvents ``source``: ids are unique within one Redis and key prefix; give each
    deployment its own source when several feed one billing system."""
    return f"urn:credit-gate:{key_prefix}"
