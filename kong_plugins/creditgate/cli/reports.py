"""Usage, the ledger export for billing, and the bulk import."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import click
from rich.bar import Bar
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from creditgate.cli.common import (
    EXIT_PIPE_CLOSED,
    EXIT_PROBLEMS,
    INSTANT,
    Env,
    json_option,
    pass_admin,
    silence_stdout,
)
from creditgate.cli.output import conflicting_formats, console, emit_json, show, table, when
from creditgate.core.periods import DAY_SECONDS
from creditgate.errors import InvalidDocument
from creditgate.ops import export, importer
from creditgate.ops.admin import Admin, LedgerEntry, credits_per_day


def _default_since(now: int) -> int:
    return now - now % DAY_SECONDS - 6 * DAY_SECONDS


@click.command("usage")
@click.option("--account", "accounts", multiple=True, help="Only this account (repeatable).")
@click.option(
    "--since",
    callback=INSTANT,
    metavar="TIME",
    help="From this day or time (default: 6 days ago, 00:00 UTC).",
)
@click.option("--until", callback=INSTANT, metavar="TIME", help="Before this day or time (default: now).")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True
)
@json_option
@pass_admin
def usage(
    admin: Admin, accounts: tuple[str, ...], since: int | None, until: int | None, fmt: str, as_json: bool
) -> None:
    """Requests, credits and refusals per account, route and UTC day, with a chart of credits per day."""
    conflicting_formats(click.get_current_context(), fmt, as_json, "json")
    now = admin.now()
    until = now + 1 if until is None else until
    since = _default_since(now) if since is None else since
    rows = admin.usage(since=since, until=until, accounts=list(accounts) or None)
    if as_json or fmt == "json":
        emit_json([r.to_json() for r in rows])
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        columns = ["day", "account", "route", "member", "requests", "credits", "refunded", "refused"]
        columns += ["replayed", "shadow_allowed", "shadow_refused"]
        writer.writerow(columns)
        for r in rows:
            writer.writerow([r.to_json()[c] if c != "member" else r.member for c in columns])
        return
    out = console()
    if not rows:
        out.print(f"No usage from {when(since)} to {when(until)}.")
        return
    grid = table("day", "account", "route", "member", "requests", "credits", "refunded", "refused")
    for r in rows:
        grid.add_row(
            r.day,
            r.account,
            r.route,
            r.member,
            str(r.requests),
            str(r.credits),
            str(r.refunded),
            str(r.refused),
        )
    show(grid, out)
    if any(r.shadow_allowed or r.shadow_refused for r in rows):
        shadow = table("day", "account", "route", "would charge", "would refuse", title="Shadow mode")
        for r in rows:
            if r.shadow_allowed or r.shadow_refused:
                shadow.add_row(r.day, r.account, r.route, str(r.shadow_allowed), str(r.shadow_refused))
        out.print()
        show(shadow, out)
    per_day = credits_per_day(rows)
    top = max(per_day.values()) or 1
    chart = table("day", "credits", "", title="Credits per day")
    for day, spent in sorted(per_day.items()):
        chart.add_row(day, str(spent), Bar(size=top, begin=0, end=spent, width=40))
    out.print()
    out.print(chart)


class Counted:
    """The entries an export has taken so far (the last one may not have been written)."""

    def __init__(self, entries: Any) -> None:
        self._entries = iter(entries)
        self.count = 0

    def __iter__(self) -> Counted:
        return self

    def __next__(self) -> LedgerEntry:
        entry: LedgerEntry = next(self._entries)
        self.count += 1
        return entry


@click.command("export")
@click.option("--since", callback=INSTANT, metavar="TIME", help="Entries recorded at or after this time.")
@click.option(
    "--until",
    callback=INSTANT,
    metavar="TIME",
    help="Entries recorded before this time (use it as the next --since).",
)
@click.option("--account", "accounts", multiple=True, help="Only this account (repeatable).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in export.Format]),
    default=export.Format.JSONL.value,
    show_default=True,
)
@click.option("--source", help="CloudEvents source (default urn:credit-gate:<key prefix>).")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout."
)
@json_option
@pass_admin
def export_ledger(
    admin: Admin,
    since: int | None,
    until: int | None,
    accounts: tuple[str, ...],
    fmt: str,
    source: str | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Export ledger entries for billing, as JSON Lines, CSV or CloudEvents.

    Each entry's id (<account>/<ledger id>) is stable: export overlapping ranges and de-duplicate by id.
    --json is --format jsonl.
    """
    ctx = click.get_current_context()
    conflicting_formats(ctx, fmt, as_json, export.Format.JSONL.value)
    chosen = export.Format.JSONL if as_json else export.Format(fmt)
    env = ctx.find_object(Env)
    assert env is not None
    entries = Counted(admin.ledger_entries(since=since, until=until, accounts=list(accounts) or None))
    src = source or export.default_source(env.prefix)
    if output is None:
        try:
            count = export.write(entries, chosen, sys.stdout, source=src)
            sys.stdout.flush()
        except BrokenPipeError:
            silence_stdout()
            click.echo(
                f"credit-gate: export stopped: the reader closed the output after at most "
                f"{entries.count} of the ledger entries (use --output FILE for the whole export)",
                err=True,
            )
            ctx.exit(EXIT_PIPE_CLOSED)
    else:
        # Written to a temporary name and renamed: a failed export never leaves half a file behind.
        partial = output.with_name(output.name + ".partial")
        try:
            with partial.open("w", encoding="utf-8", newline="") as handle:
                count = export.write(entries, chosen, handle, source=src)
            partial.replace(output)
        except OSError as error:
            raise InvalidDocument(f"cannot write the file: {error.strerror or error}", str(output)) from None
        finally:
            partial.unlink(missing_ok=True)
    click.echo(f"credit-gate: exported {count} ledger {'entry' if count == 1 else 'entries'}", err=True)


# Bulk import


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write rejected rows here, to fix and re-import.",
)
@json_option
@pass_admin
def import_accounts(admin: Admin, file: Path, rejects: Path | None, as_json: bool) -> None:
    """Import accounts, subscriptions and opening balances from a CSV FILE.

    Columns: account (required), plan, status, starts_at, anchor, expires_at, balance, key, note.
    Each row is applied wholly or not at all, and importing the same file again changes nothing.
    Exit 5 when some rows were rejected.
    """
    total = importer.count_rows(file) if file.exists() else 0
    err = Console(stderr=True)
    with Progress(
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=as_json or not err.is_terminal,
    ) as progress:
        task = progress.add_task("import", total=total)
        report = importer.import_csv(admin, file, advance=lambda: progress.advance(task))
    if rejects is not None:
        with rejects.open("w", encoding="utf-8", newline="") as handle:
            importer.write_rejects(report, handle)
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(
            f"Imported {report.applied} of {report.rows} rows: {report.granted_credits} credits granted, "
            f"{report.grants_already_applied} opening balance(s) already imported, "
            f"{len(report.rejected)} rejected."
        )
        if report.rejected:
            grid = table("line", "account", "error", title="Rejected rows")
            for r in report.rejected:
                grid.add_row(str(r.line), r.account, r.error)
            show(grid)
    if report.rejected:
        click.get_current_context().exit(EXIT_PROBLEMS)


COMMANDS = [usage, export_ledger, import_accounts]
