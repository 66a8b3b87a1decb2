"""Accounts, subscriptions and pool caps."""

from __future__ import annotations

from typing import Any

import click

from creditgate.cli.common import CAP, INSTANT, STATUS, json_option, pass_admin
from creditgate.cli.output import credits, emit_json, show, show_view, table, when
from creditgate.core.model import Status
from creditgate.errors import InvalidDocument, NotFound
from creditgate.ops.admin import AccountView, Admin


def subscription_json(view: AccountView) -> dict[str, Any]:
    return {"account": view.account, **(view.to_json()["subscription"] or {})}


@click.command("accounts")
@json_option
@pass_admin
def accounts(admin: Admin, as_json: bool) -> None:
    """List every account with its plan, status and balance."""
    views = admin.accounts()
    if as_json:
        emit_json([v.to_json() for v in views])
        return
    if not views:
        click.echo("No accounts yet: `credit-gate subscribe ACCOUNT PLAN` creates one.")
        return
    grid = table("account", "plan", "status", "balance", "allowance left", "period ends")
    for v in views:
        left = f"{v.remaining}/{v.allowance}" if v.subscribed else "-"
        grid.add_row(v.account, v.plan or "-", v.status or "-", str(v.balance), left, when(v.period_end, "-"))
    show(grid)


@click.command("subscribe")
@click.argument("account")
@click.argument("plan")
@click.option("--status", type=STATUS, default=Status.ACTIVE.value, show_default=True)
@click.option("--start", callback=INSTANT, metavar="TIME", help="When the subscription starts (default now).")
@click.option(
    "--anchor", callback=INSTANT, metavar="TIME", help="When billing periods start (default: the start)."
)
@click.option(
    "--expires", callback=INSTANT, metavar="TIME", help="When the subscription ends (default never)."
)
@json_option
@pass_admin
def subscribe(
    admin: Admin,
    account: str,
    plan: str,
    status: str,
    start: int | None,
    anchor: int | None,
    expires: int | None,
    as_json: bool,
) -> None:
    """Subscribe ACCOUNT to PLAN (or re-subscribe it with new times); its balance is kept."""
    admin.subscribe(account, plan, status=Status(status), starts_at=start, anchor=anchor, expires_at=expires)
    view = admin.view(account)
    if as_json:
        emit_json(subscription_json(view))
    else:
        show_view(view, with_balance=False)


@click.command("change-plan")
@click.argument("account")
@click.argument("plan")
@json_option
@pass_admin
def change_plan(admin: Admin, account: str, plan: str, as_json: bool) -> None:
    """Move ACCOUNT to PLAN, keeping its status, start, anchor, expiry and balance."""
    previous = admin.change_plan(account, plan)
    view = admin.view(account)
    if as_json:
        emit_json({**subscription_json(view), "previous_plan": previous})
    else:
        click.echo(f"Account '{account}' moved from plan '{previous}' to '{plan}'.")


@click.command("set-status")
@click.argument("account")
@click.argument("status", type=STATUS, metavar="STATUS")
@json_option
@pass_admin
def set_status(admin: Admin, account: str, status: str, as_json: bool) -> None:
    """Set ACCOUNT's subscription STATUS: only active and trialing are charged, the others refused."""
    previous = admin.set_status(account, Status(status))
    if as_json:
        emit_json({"account": account, "status": status, "previous_status": previous})
    else:
        click.echo(f"Account '{account}': status {previous} -> {status}.")


@click.command("subscription")
@click.argument("account")
@json_option
@pass_admin
def subscription(admin: Admin, account: str, as_json: bool) -> None:
    """Show ACCOUNT's subscription."""
    view = admin.view(account)
    if not view.subscribed:
        raise NotFound(f"account '{account}' has no subscription; `credit-gate subscribe {account} PLAN`")
    if as_json:
        emit_json(subscription_json(view))
    else:
        show_view(view, with_balance=False)


@click.command("pool-cap")
@click.argument("pool")
@click.argument("member")
@click.argument("cap", required=False, callback=CAP)
@click.option("--remove", is_flag=True, help="Lift the member's cap.")
@json_option
@pass_admin
def pool_cap(admin: Admin, pool: str, member: str, cap: int | None, remove: bool, as_json: bool) -> None:
    """Cap what MEMBER may draw from POOL per period of the pool's plan (CAP credits), or --remove it.

    Membership comes from Kong: a consumer tagged <pool_tag_prefix><POOL> draws from POOL.
    """
    if (cap is None) == (not remove):
        raise InvalidDocument("give a CAP, or --remove to lift the cap", "cap")
    admin.set_member_cap(pool, member, None if remove else cap)
    if as_json:
        emit_json({"pool": pool, "member": member, "cap": None if remove else cap})
    elif remove:
        click.echo(f"Pool '{pool}': member '{member}' has no cap.")
    else:
        click.echo(f"Pool '{pool}': member '{member}' may draw {credits(cap or 0)} per period.")


@click.command("pool-caps")
@click.argument("pool")
@json_option
@pass_admin
def pool_caps(admin: Admin, pool: str, as_json: bool) -> None:
    """List the caps of POOL's members."""
    caps = admin.member_caps(pool)
    if as_json:
        emit_json([{"member": m, "cap": c} for m, c in sorted(caps.items())])
        return
    if not caps:
        click.echo(f"Pool '{pool}' caps no member.")
        return
    grid = table("member", "cap per period")
    for member, cap in sorted(caps.items()):
        grid.add_row(member, str(cap))
    show(grid)


COMMANDS = [accounts, subscribe, change_plan, set_status, subscription, pool_cap, pool_caps]
