"""``credit-gate plans``: apply, list, show and delete plans."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from creditgate.cli.common import json_option, pass_admin
from creditgate.cli.output import emit_json, show, table, yes_no
from creditgate.core.model import Plan
from creditgate.errors import Conflict
from creditgate.ops.admin import Admin
from creditgate.ops.documents import load_plan_files


def plan_json(plan: Plan) -> dict[str, Any]:
    return plan.to_document()


def plans_table(
    plans: Sequence[Plan], title: str | None = None, updated: dict[str, list[str]] | None = None
) -> Table:
    columns = ["plan", "period", "allowance", "prepaid", "title"]
    grid = table(*columns, *(["accounts updated"] if updated is not None else []), title=title)
    for plan in plans:
        cells = [
            plan.name,
            plan.period.value,
            str(plan.allowance),
            yes_no(plan.prepaid),
            plan.title,
        ]
        if updated is not None:
            cells.append(str(len(updated[plan.name])))
        grid.add_row(*cells)
    return grid


@click.group()
def plans() -> None:
    """Apply, list, show and delete plans."""


@plans.command("apply")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
@pass_admin
def plans_apply(admin: Admin, files: tuple[Path, ...], as_json: bool) -> None:
    """Create or replace the plans in YAML or JSON FILES (checked against the plan schema).

    Every plan of every file is checked before any is written: one error and nothing changes.
    Subscribed accounts get the new terms at once.
    """
    loaded = load_plan_files(files)
    updated = {plan.name: admin.apply_plan(plan) for plan in loaded}
    if as_json:
        emit_json([{**plan_json(p), "accounts_updated": len(updated[p.name])} for p in loaded])
        return
    show(plans_table(loaded, title=f"Applied {len(loaded)} plan(s)", updated=updated))


@plans.command("list")
@json_option
@pass_admin
def plans_list(admin: Admin, as_json: bool) -> None:
    """List every plan."""
    found = admin.plans()
    if as_json:
        emit_json([plan_json(p) for p in found])
    elif not found:
        click.echo("No plans yet: `credit-gate plans apply plans.yaml` creates them.")
    else:
        show(plans_table(found))


@plans.command("show")
@click.argument("name")
@json_option
@pass_admin
def plans_show(admin: Admin, name: str, as_json: bool) -> None:
    """Show a plan and how many accounts are subscribed to it."""
    plan = admin.plan(name)
    subscribers = admin.plan_subscribers(name)
    if as_json:
        emit_json({**plan_json(plan), "subscribed_accounts": len(subscribers)})
        return
    grid = table("field", "value")
    for field, value in plan_json(plan).items():
        grid.add_row(field, yes_no(value) if isinstance(value, bool) else str(value))
    grid.add_row("subscribed accounts", str(len(subscribers)))
    show(grid)


@plans.command("delete")
@click.argument("name")
@click.option(
    "--force", is_flag=True, help="Delete even while accounts are subscribed (they keep its terms)."
)
@json_option
@pass_admin
def plans_delete(admin: Admin, name: str, force: bool, as_json: bool) -> None:
    """Delete a plan; refused (exit 3) while accounts are subscribed to it, unless --force."""
    try:
        admin.delete_plan(name, force=force)
    except Conflict as error:
        message = str(error).replace("or force the deletion", "or pass --force to delete it anyway")
        raise Conflict(message) from None
    if as_json:
        emit_json({"deleted": name})
    else:
        click.echo(f"Deleted plan '{name}'.")


COMMANDS = [plans]
