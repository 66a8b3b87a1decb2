"""Bulk import of accounts, subscriptions and opening balances from CSV.

Columns (a header row is required; only ``account`` is):

    account     the account, as the plugin's ``account_by`` names it
    plan        subscribe the account to this plan (empty: leave its subscription as it is)
    status      active (default), trialing, past_due, suspended, canceled
    starts_at   RFC 3339 or Unix seconds (default: kept, or now for a new subscription)
    anchor      when billing periods start (default: kept, or starts_at)
    expires_at  RFC 3339 or Unix seconds (default: kept, or never)
    balance     credits granted once as the opening balance (default 0)
    key         the grant's idempotency key (default ``import:<account>``)
    note        the grant's note in the ledger (default ``import``)

Each row is checked, then applied in one Redis script, so a row is applied wholly or not at all and a
bad row never touches another. Running the same file again changes nothing: the subscription gets the
same values and the balance's key has been used. Rejected rows are reported with the reason, and can be
written to a CSV to fix and import again.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from creditgate.core.inputs import parse_credits, parse_instant
from creditgate.core.model import Status, shown
from creditgate.errors import CreditGateError, InvalidDocument, StoreError
from creditgate.ops.admin import Admin

COLUMNS = ("account", "plan", "status", "starts_at", "anchor", "expires_at", "balance", "key", "note")
# What a rejects file (``write_rejects``) adds to a row: read and left out, so that the file, fixed,
# imports as it is.
REJECT_COLUMNS = ("line", "error")


@dataclass(frozen=True)
class Rejected:
    line: int
    account: str
    error: str
    row: dict[str, str]


@dataclass
class ImportReport:
    rows: int = 0
    applied: int = 0
    granted_credits: int = 0
    grants_already_applied: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "applied": self.applied,
            "granted_credits": self.granted_credits,
            "grants_already_applied": self.grants_already_applied,
            "rejected": [{"line": r.line, "account": r.account, "error": r.error} for r in self.rejected],
        }


def _open(path: Path) -> TextIO:
    try:
        # utf-8-sig: a spreadsheet's byte-order mark must not become part of the first column's name.
        return path.open(newline="", encoding="utf-8-sig")
    except OSError as error:
        raise InvalidDocument(f"cannot read the file: {error.strerror or error}", str(path)) from None


def count_rows(path: Path) -> int:
    """Data rows in the file (for a progress bar); a cheap pass that parses nothing."""
    with _open(path) as handle:
        return max(sum(1 for _ in csv.reader(handle)) - 1, 0)


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, cells by column) for each data row; the header is checked first."""
    with _open(path) as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip().lower() for name in next(reader)]
        except StopIteration:
            raise InvalidDocument("is empty; the first row must name the columns", str(path)) from None
        except (csv.Error, UnicodeDecodeError) as error:
            raise InvalidDocument(f"is not a readable UTF-8 CSV file: {error}", str(path)) from None
        unknown = [name for name in header if name not in COLUMNS and name not in REJECT_COLUMNS]
        if unknown or "account" not in header or len(set(header)) != len(header):
            raise InvalidDocument(
                f"has the columns {header}; expected 'account' and any of {list(COLUMNS[1:])}, each once",
                f"{path}: header",
            )
        try:
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue
                if len(cells) > len(header):
                    yield reader.line_num, {"__error__": f"has {len(cells)} cells, the header {len(header)}"}
                    continue
                yield (
                    reader.line_num,
                    {
                        name: cell.strip()
                        for name, cell in zip(header, cells, strict=False)
                        if name not in REJECT_COLUMNS
                    },
                )
        except (csv.Error, UnicodeDecodeError) as error:
            raise InvalidDocument(f"is not a readable UTF-8 CSV file: {error}", str(path)) from None


def apply_row(admin: Admin, row: dict[str, str]) -> tuple[int, bool]:
    """Apply one row; returns (credits granted now, whether the grant had been applied before)."""
    if "__error__" in row:
        raise InvalidDocument(row["__error__"], "row")

    def instant(name: str) -> int | None:
        return parse_instant(row[name], name) if row.get(name) else None

    status_text = row.get("status") or None
    try:
        status = Status(status_text) if status_text else None
    except ValueError:
        raise InvalidDocument(
            f"must be one of {[s.value for s in Status]}, got {shown(status_text)}", "status"
        ) from None
    balance = parse_credits(row["balance"], "balance") if row.get("balance") else 0
    outcome = admin.import_account(
        row.get("account", ""),
        plan=row.get("plan") or None,
        status=status,
        starts_at=instant("starts_at"),
        anchor=instant("anchor"),
        expires_at=instant("expires_at"),
        balance=balance,
        idempotency_key=row.get("key") or None,
        note=row.get("note") or "import",
    )
    return (balance if outcome.grant == 1 else 0), outcome.grant == 0


def import_csv(admin: Admin, path: Path, *, advance: Callable[[], None] | None = None) -> ImportReport:
    """Import every row of ``path``; bad rows are reported, never half-applied.

    A Redis failure stops the import (every following row would fail too): the rows before it are
    applied, and running the file again is safe.
    """
    report = ImportReport()
    first_line: dict[str, int] = {}
    for line, row in read_rows(path):
        report.rows += 1
        account = row.get("account", "")
        try:
            if account in first_line:
                raise InvalidDocument(
                    f"appears again (first at line {first_line[account]}); give each account one row",
                    "account",
                )
            if account:
                first_line[account] = line
            granted, seen = apply_row(admin, row)
        except StoreError as error:
            raise StoreError(
                f"{error} (at line {line} of {path}; the rows before it are applied, and importing the "
                "file again is safe)"
            ) from error
        except CreditGateError as error:
            report.rejected.append(Rejected(line, account, str(error), row))
        else:
            report.applied += 1
            report.granted_credits += granted
            report.grants_already_applied += int(seen)
        if advance is not None:
            advance()
    return report


def write_rejects(report: ImportReport, out: TextIO) -> None:
    """The rejected rows as CSV with an ``error`` column, to fix and import again."""
    writer = csv.DictWriter(out, fieldnames=[*COLUMNS, *REJECT_COLUMNS], lineterminator="\n")
    writer.writeheader()
    for rejected in report.rejected:
        cells = {k: v for k, v in rejected.row.items() if k in COLUMNS}
        writer.writerow({**cells, "line": rejected.line, "error": rejected.error})
