"""``credit-gate dead-letters``: list and replay the events a receiver did not take, by account or receiver.

Replaying signs each event as the service does, with ``CREDIT_GATE_EVENT_SECRET`` (the service's);
every attempt is counted in the service's delivery counters, and receivers' URLs are shown redacted.
"""

from __future__ import annotations

from typing import Any

import click

from creditgate.cli.common import EXIT_INVALID, EXIT_PROBLEMS, Failure, json_option, pass_admin, say_error
from creditgate.cli.output import emit_json, show, table
from creditgate.ops.admin import Admin
from creditgate.ops.dead_letters import Letter, find_letters, letter_page, replay_letters

ACCOUNT = click.option("--account", help="Only this account's events.")
RECEIVER = click.option("--receiver", help="Only to this receiver: its URL as configured, or as listed.")
PAGE = 1000  # letters a read, the API's largest page


@click.group("dead-letters")
def dead_letters() -> None:
    """List and replay events a receiver did not take after the last attempt."""


@dead_letters.command("list")
@ACCOUNT
@RECEIVER
@click.option("--limit", type=click.IntRange(1), help="Letters at most (all by default).")
@click.option("--after", metavar="PLACE", help="Go on after this place (a cut listing says which).")
@json_option
@pass_admin
def list_letters(
    admin: Admin,
    account: str | None,
    receiver: str | None,
    limit: int | None,
    after: str | None,
    as_json: bool,
) -> None:
    """The dead letters, oldest first, read from Redis a page (1000) at a time.

    Cut by --limit with letters left, it says on stderr the --after that goes on."""
    from creditgate.service.events import receiver_filter, shown_letter

    letters: list[Letter] = []
    while limit is None or len(letters) < limit:
        size = PAGE if limit is None else min(PAGE, limit - len(letters))
        page = letter_page(
            admin, after=after, limit=size, account=account, receiver=receiver_filter(receiver)
        )
        letters += [shown_letter(d) for d in page.letters]
        after = page.next
        if after is None:
            break
    if after is not None:
        click.echo(f"credit-gate: more letters may follow: go on with --after {after}", err=True)
    if as_json:
        emit_json(letters)
        return
    grid = table("id", "event", "type", "account", "receiver", "attempts", "dead at", "error")
    for d in letters:
        event: dict[str, Any] = d.get("event") or {}
        grid.add_row(
            str(d.get("id", "")),
            str(event.get("id", "")),
            str(event.get("type", "")),
            str(event.get("account", "")),
            str(d.get("url", "")),
            str(d.get("attempts", "")),
            str(d.get("dead_at", "")),
            str(d.get("error", "")),
        )
    show(grid)


@dead_letters.command("replay")
@click.argument("ids", nargs=-1)
@ACCOUNT
@RECEIVER
@click.option(
    "--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True, help="Letters at most."
)
@json_option
@pass_admin
def replay(
    admin: Admin, ids: tuple[str, ...], account: str | None, receiver: str | None, limit: int, as_json: bool
) -> None:
    """Send the matching letters (IDS, or all) again, oldest first; exit 5 if any failed.

    Each delivered leaves the list; a receiver that fails is not tried again in this run (its letters
    stay)."""
    from creditgate.service.events import EventSettings, receiver_filter, redacted_url, replay_session, sender

    settings = EventSettings.load()
    if len(settings.secret) < 16:
        raise Failure(
            "set CREDIT_GATE_EVENT_SECRET (the service's) to sign the events sent again", EXIT_INVALID
        )
    letters = find_letters(admin, account=account, receiver=receiver_filter(receiver))
    if ids:
        letters = [d for d in letters if d.get("id") in set(ids)]
    with replay_session() as session:
        done = replay_letters(admin, letters[:limit], sender(settings, session))

    def shown(d: Letter, error: str = "") -> dict[str, Any]:
        row = {"id": d.get("id"), "event": (d.get("event") or {}).get("id"), "url": redacted_url(d["url"])}
        return {**row, "error": error} if error else row

    if as_json:
        emit_json(
            {
                "delivered": [shown(d) for d in done.delivered],
                "failed": [shown(d, e) for d, e in done.failed],
                "skipped": [shown(d) for d in done.skipped],
                "left": len(letters) - len(done.delivered),
            }
        )
    else:
        grid = table("id", "event", "receiver", "outcome", "error")
        outcomes = [(d, "delivered", "") for d in done.delivered]
        outcomes += [(d, "failed", e) for d, e in done.failed] + [(d, "skipped", "") for d in done.skipped]
        for d, outcome, error in outcomes:
            row = shown(d, error)
            grid.add_row(str(row["id"]), str(row["event"]), row["url"], outcome, error)
        show(grid)
    if done.failed:
        if not as_json:
            say_error(f"{len(done.failed)} receiver(s) did not take the event; the letters stay")
        click.get_current_context().exit(EXIT_PROBLEMS)


COMMANDS = [dead_letters]
