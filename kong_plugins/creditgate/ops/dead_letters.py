"""Dead letters, for the operators: events a receiver did not take after the last attempt, listed a
page at a time, found by account or receiver and replayed in bulk (the API's
``POST /v1/events/dead-letters/replay``, the CLI's ``credit-gate dead-letters replay``). The service's
delivery thread makes them (service/events.py).

Delivering is not done here: the caller hands over ``send``, which posts one event to one URL (signed,
with the service's settings) and returns "" when the receiver took it, else why not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from creditgate.errors import StoreError
from creditgate.ops.admin import Admin
from creditgate.store import events

Letter = dict[str, Any]
Send = Callable[[str, dict[str, Any]], str]


@dataclass(frozen=True)
class Replayed:
    """What a replay did: letters delivered (and dropped), failed (kept, with why not) and skipped (kept:
    their URL failed earlier in the same call)."""

    delivered: list[Letter] = field(default_factory=list)
    failed: list[tuple[Letter, str]] = field(default_factory=list)
    skipped: list[Letter] = field(default_factory=list)


def letter_account(letter: Letter) -> str:
    event = letter.get("event")
    return str(event.get("account", "")) if isinstance(event, dict) else ""


def matches(letter: Letter, account: str | None, receiver: Callable[[str], bool] | None) -> bool:
    """Of ``account``'s events and to a URL ``receiver`` accepts, each when given."""
    return (account is None or letter_account(letter) == account) and (
        receiver is None or receiver(str(letter.get("url", "")))
    )


def find_letters(
    admin: Admin, *, account: str | None = None, receiver: Callable[[str], bool] | None = None
) -> list[Letter]:
    """The dead letters, oldest first: only of ``account``'s events, only to the URLs ``receiver``
    accepts, when given (a name no letter has matches none). Read 500 a Redis command (HSCAN), however
    many wait."""
    letters = [d for d in events.scan_dead_letters(admin.store) if matches(d, account, receiver)]
    letters.sort(key=lambda letter: (str(letter.get("dead_at", "")), str(letter.get("id", ""))))
    return letters


# The letters a page reads at most, matched or not: the largest page (1000) and one more, which tells
# whether there are more. A filter that matches few letters would otherwise read them all for one page.
PAGE_READ = 1_001
CHUNK = 500  # letters read a round trip once the first chunk (the page and one) did not fill it


@dataclass(frozen=True)
class LetterPage:
    """A page of the dead letters: ``next`` is the place to go on after (None: no letter is left), and
    ``waiting`` how many letters wait in all, matched or not."""

    letters: list[Letter]
    next: str | None
    waiting: int


def letter_page(
    admin: Admin,
    *,
    after: str | None = None,
    limit: int = 100,
    account: str | None = None,
    receiver: Callable[[str], bool] | None = None,
) -> LetterPage:
    """Up to ``limit`` dead letters oldest first, past ``after`` (a page's ``next``), matched as
    ``find_letters`` does. Read from their order (store/events.py), at most PAGE_READ of them: the cost
    is the page's, however many wait; with a filter, a page may hold fewer than ``limit``, or none, and
    still have a ``next``."""
    store = admin.store
    waiting = events.dead_letters_waiting(store)
    found: list[Letter] = []
    last = kept = after or ""  # the place of the last letter read, and of the last one kept
    read, size = 0, limit + 1
    while read < PAGE_READ:
        wanted = min(size, PAGE_READ - read)
        chunk = events.dead_letters_after(store, last, wanted)
        for place, letter in chunk:
            if letter is not None and matches(letter, account, receiver):
                if len(found) == limit:  # one more: the page is full and the next one starts here
                    return LetterPage(found, kept, waiting)
                found.append(letter)
                kept = place
            last = place
        read += len(chunk)
        if len(chunk) < wanted:
            return LetterPage(found, None, waiting)
        size = CHUNK
    return LetterPage(found, last, waiting)


def replay_letters(admin: Admin, letters: Iterable[Letter], send: Send) -> Replayed:
    """Send each letter's event to its URL again, once, in the order given (``find_letters``'s).
    Delivered, a letter leaves the list; failed, it stays, and the letters after it to the same URL are
    skipped in this call (that receiver is down, and each attempt could wait out the timeout). Every
    attempt is counted, as a ``replay`` (store/events.py's delivery counters, in Redis)."""
    done = Replayed()
    down: set[str] = set()
    for letter in letters:
        url = str(letter.get("url", ""))
        if url in down:
            done.skipped.append(letter)
            continue
        error = send(url, letter.get("event") or {})
        if error:
            down.add(url)
            done.failed.append((letter, error))
        else:
            events.drop_dead_letter(admin.store, str(letter.get("id", "")))
            done.delivered.append(letter)
        count_replay(admin, "failed" if error else "delivered")
    return done


def count_replay(admin: Admin, outcome: str) -> None:
    """Counted in Redis if it can be: a count lost to an outage must not undo what was sent."""
    with contextlib.suppress(StoreError):
        events.count_delivery(admin.store, outcome, via="replay")


__all__ = [
    "PAGE_READ",
    "Letter",
    "LetterPage",
    "Replayed",
    "Send",
    "count_replay",
    "find_letters",
    "letter_account",
    "letter_page",
    "matches",
    "replay_letters",
]
