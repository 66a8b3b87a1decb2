"""How commands print: tables for people that never split an id, JSON for scripts."""

from __future__ import annotations

import json
import os
from typing import Any

import click
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from creditgate.core.inputs import format_instant
from creditgate.ops.admin import AccountView

NUMERIC_COLUMNS = {
    "balance",
    "replayed",
    "entries",
    "amount",
    "allowance",
    "requests",
    "credits",
    "refused",
    "refunded",
    "would charge",
    "would refuse",
    "cap per period",
}
# Free text folds onto more lines when a table is wider than the screen; everything else (ids, names,
# times, numbers) never does: an account id split over three lines cannot be copied or grepped.
FOLDING_COLUMNS = {"title", "detail", "error", "value"}


def console() -> Console:
    """Standard output for people; tables keep their width when piped into a file or a pager."""
    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=int(os.environ.get("COLUMNS", "120")), no_color=True)
    return out


def show(grid: Table, out: Console | None = None) -> None:
    """Print a table; when even its folded form is wider than the screen, print it wider rather than
    split an id or a time (a terminal then wraps whole lines, which copy and grep as they are)."""
    out = out or console()
    for column in grid.columns:
        cells = [column.header, *column.cells]
        widths = [cell_len(cell) for cell in cells if isinstance(cell, str)]
        if len(widths) < len(cells):
            continue  # a chart's bars: widths of their own
        if column.no_wrap:  # rich measures a cell by its longest word; a no-wrap cell needs all of it
            column.min_width = max(widths)
        else:  # free text folds, but keeps a readable width
            column.min_width = min(max(widths), 20)
    # table()'s layout: one space of padding each side of a column but not at the edges, and one
    # separator between two columns.
    needed = sum(column.min_width or 0 for column in grid.columns) + 3 * (len(grid.columns) - 1)
    if needed > out.width:  # rich never prints wider than its console: a wider one, same output
        out = Console(highlight=False, width=needed, no_color=out.no_color, file=out.file)
    out.print(grid, crop=False)


def credits(amount: int) -> str:
    return f"{amount} credit" if amount == 1 else f"{amount} credits"


def yes_no(value: bool) -> str:
    """How every table shows a flag (prepaid, ok): the same words everywhere."""
    return "yes" if value else "no"


def conflicting_formats(ctx: click.Context, fmt: str, as_json: bool, json_format: str) -> None:
    """--json and a --format given on the command line must agree, or it is a usage error."""
    explicit = ctx.get_parameter_source("fmt") is click.core.ParameterSource.COMMANDLINE
    if as_json and explicit and fmt != json_format:
        raise click.UsageError(f"--json and --format {fmt} conflict: give one of them", ctx=ctx)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def table(*columns: str, title: str | None = None) -> Table:
    grid = Table(
        box=box.SIMPLE_HEAD,
        title=title,
        title_justify="left",
        show_edge=False,
        pad_edge=False,
        show_header=columns[:2] != ("field", "value"),  # a record reads better without a header
    )
    for column in columns:
        numeric = column in NUMERIC_COLUMNS
        folds = column in FOLDING_COLUMNS
        grid.add_column(
            column,
            justify="right" if numeric else "left",
            overflow="fold" if folds else "crop",  # `show` makes room: nothing is cropped
            no_wrap=not folds,
        )
    return grid


def when(epoch: int | None, none: str = "-") -> str:
    return format_instant(epoch) or none


def show_view(view: AccountView, *, with_balance: bool) -> None:
    grid = table("field", "value")
    grid.add_row("account", view.account)
    if with_balance:
        grid.add_row("balance", f"{view.balance} credits")
        if view.debt:
            grid.add_row("debt", f"{view.debt} credits owed: requests refused until a credit pays it")
        if view.frozen:
            grid.add_row("frozen", f"{view.frozen} credits held by open disputes")
    if not view.subscribed:
        grid.add_row("subscription", "none (`credit-gate subscribe ACCOUNT PLAN`)")
        show(grid)
        return
    grid.add_row("plan", view.plan)
    grid.add_row("status", view.status)
    if view.graced:
        grid.add_row("grace until", when(view.grace_until))
    grid.add_row("starts at", when(view.starts_at))
    grid.add_row("period anchor", when(view.anchor))
    grid.add_row("expires at", when(view.expires_at, "never"))
    if with_balance:
        grid.add_row("period", view.period)
        grid.add_row("allowance", f"{view.allowance} credits per period")
        grid.add_row("allowance used", str(view.used))
        grid.add_row("allowance left", str(view.remaining))
        grid.add_row("period ends", when(view.period_end, "never"))
        grid.add_row("prepaid use", "yes" if view.prepaid else "no (refused when the allowance is used up)")
    show(grid)
