"""Credits and the ledger: grant, adjust down, balance, ledger, verify."""

from __future__ import annotations

from typing import Any

import click

from creditgate.cli.common import CREDITS, EXIT_PROBLEMS, INSTANT, json_option, pass_admin, say_error
from creditgate.cli.output import credits, emit_json, show, show_view, table, when
from creditgate.errors import NotFound, StoreError
from creditgate.ops import export
from creditgate.ops.admin import Admin, CreditResult, LedgerEntry


def credit_json(account: str, result: CreditResult) -> dict[str, Any]:
    """The HTTP API's answer: ``amount`` is what the key's change moved (the first one's on a replay)."""
    return {
        "account": account,
        "amount": result.amount,
        "applied": result.applied,
        "balance": result.balance,
        "ledger_id": result.ledger_id,
    }


def _unknown_outcome(error: StoreError, account: str, key: str) -> StoreError:
    hint = (
        f"retrying with the same --key {key} is safe"
        if key
        else f"check `credit-gate ledger {account}` before retrying, and pass --key next time"
    )
    return StoreError(f"{error} (the change may or may not have been made: {hint})")


@click.command("grant")
@click.argument("account")
@click.argument("amount", callback=CREDITS)
@click.option("--note", default="", help="Why, kept in the ledger (an invoice number, a reason).")
@click.option(
    "--key",
    default="",
    help="Idempotency key: the same key counts once, however often it is sent (exit 3 if sent for "
    "another amount).",
)
@click.option("--create", is_flag=True, help="Hold credit for an account that does not exist yet.")
@json_option
@pass_admin
def grant(admin: Admin, account: str, amount: int, note: str, key: str, create: bool, as_json: bool) -> None:
    """Top up ACCOUNT with AMOUNT credits."""
    try:
        result = admin.grant(account, amount, note=note, idempotency_key=key, create=create)
    except NotFound:
        raise NotFound(
            f"no account named '{account}'; subscribe it first (`credit-gate subscribe {account} PLAN`), "
            "or pass --create to hold credit for it"
        ) from None
    except StoreError as error:
        raise _unknown_outcome(error, account, key) from error
    if as_json:
        emit_json(credit_json(account, result))
    elif result.applied:
        click.echo(
            f"Granted {credits(amount)} to '{account}': balance {result.balance} (ledger {result.ledger_id})."
            + _debt_paid(result)
        )
    else:
        click.echo(
            f"Key '{key}' was already applied (ledger {result.ledger_id}); nothing granted. "
            f"Balance {result.balance}."
        )


def _debt_paid(result: CreditResult) -> str:
    """A grant pays the account's debt first: say so, or the balance would look short."""
    if not result.debt_paid:
        return ""
    return f" {credits(result.debt_paid)} of it paid the account's debt; {result.debt} still owed."


@click.command("adjust-down")
@click.argument("account")
@click.argument("amount", callback=CREDITS)
@click.option("--note", default="", help="Why, kept in the ledger.")
@click.option("--key", default="", help="Idempotency key: the same key counts once.")
@json_option
@pass_admin
def adjust_down(admin: Admin, account: str, amount: int, note: str, key: str, as_json: bool) -> None:
    """Take AMOUNT credits from ACCOUNT; refused (exit 3) if the balance would go below zero or --key was
    used for another change."""
    try:
        result = admin.adjust_down(account, amount, note=note, idempotency_key=key)
    except StoreError as error:
        raise _unknown_outcome(error, account, key) from error
    if as_json:
        emit_json(credit_json(account, result))
    elif result.applied:
        click.echo(
            f"Took {credits(amount)} from '{account}': balance {result.balance} (ledger {result.ledger_id})."
        )
    else:
        click.echo(
            f"Key '{key}' was already applied (ledger {result.ledger_id}); nothing taken. "
            f"Balance {result.balance}."
        )


@click.command("balance")
@click.argument("account")
@json_option
@pass_admin
def balance(admin: Admin, account: str, as_json: bool) -> None:
    """Show ACCOUNT's balance, its period allowance (used, left, end) and its subscription."""
    view = admin.view(account)
    if as_json:
        emit_json(view.to_json())
    else:
        show_view(view, with_balance=True)


# The ledger


def entry_detail(entry: LedgerEntry) -> str:
    fields = entry.fields
    parts = []
    if fields.get("kind") == "charge":
        parts.append(f"cost {fields.get('cost', '0')} ({fields.get('from_allowance', '0')} from allowance)")
        parts.append(fields.get("route", ""))
    if fields.get("debt_paid"):
        parts.append(f"{fields['debt_paid']} paid the debt ({fields.get('debt', '0')} still owed)")
    if fields.get("kind") == "period_reset":
        parts.append(
            f"{fields.get('allowance_used', '0')} of {fields.get('allowance', '0')} used in the last period"
        )
    for name in ("note", "key", "reference"):
        if fields.get(name):
            parts.append(f"{name}: {fields[name]}")
    return "; ".join(p for p in parts if p)


@click.command("ledger")
@click.argument("account")
@click.option("--since", callback=INSTANT, metavar="TIME", help="Entries recorded at or after this time.")
@click.option("--until", callback=INSTANT, metavar="TIME", help="Entries recorded before this time.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True, help="The newest N.")
@json_option
@pass_admin
def ledger(
    admin: Admin, account: str, since: int | None, until: int | None, limit: int, as_json: bool
) -> None:
    """Show ACCOUNT's newest ledger entries, oldest first."""
    entries = admin.ledger(account, since=since, until=until, limit=limit)
    if as_json:
        emit_json([export.record(e) for e in entries])
        return
    if not entries:
        click.echo(f"No ledger entries for '{account}' in that range.")
        return
    grid = table("ledger id", "time", "kind", "amount", "balance", "detail")
    for e in entries:
        grid.add_row(
            e.id,
            when(int(e.fields.get("at") or 0)),
            e.fields.get("kind", ""),
            e.fields.get("amount", ""),
            e.fields.get("balance", ""),
            entry_detail(e),
        )
    show(grid)


@click.command("verify")
@click.argument("accounts", nargs=-1)
@json_option
@pass_admin
def verify(admin: Admin, accounts: tuple[str, ...], as_json: bool) -> None:
    """Check that replaying each ledger gives the balance (every account if none is named); exit 5 if not.

    Each ledger is read 1000 entries per Redis command, so charges go on meanwhile; its balance is
    checked as of its newest entry when the check began (shown as `through`)."""
    names = list(accounts) or [v.account for v in admin.accounts()]
    if not admin.store_marked():  # an emptied Redis is no success, even with nothing to replay
        say_error("Redis holds no credit-gate data (no store marker): it was emptied or is not the database")
        click.get_current_context().exit(EXIT_PROBLEMS)
    checks = [admin.verify_ledger(name) for name in names]
    bad = [c for c in checks if not c.ok]
    if as_json:
        emit_json(
            [
                {
                    "account": c.account,
                    "balance": c.balance,
                    "replayed": c.replayed,
                    "entries": c.entries,
                    "through": c.through or None,
                    "ok": c.ok,
                }
                for c in checks
            ]
        )
    else:
        grid = table("account", "balance", "replayed", "entries", "through", "ok")
        for c in checks:
            row = (c.account, str(c.balance), str(c.replayed), str(c.entries), c.through)
            grid.add_row(*row, "yes" if c.ok else "NO")
        show(grid)
    if bad:
        if not as_json:
            say_error(f"{len(bad)} ledger(s) do not replay to the balance (e.g. '{bad[0].account}')")
        click.get_current_context().exit(EXIT_PROBLEMS)


COMMANDS = [grant, adjust_down, balance, ledger, verify]
