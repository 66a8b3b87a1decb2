"""`credit-gate dead-letters list` and `replay`: the letters by account or receiver, their receivers'
secrets never shown, every replay counted where the service's /metrics reads it."""

from __future__ import annotations

import json

import pytest

from creditgate.core.alerts import Alerts
from creditgate.core.config import RedisSettings
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.service.events import Dispatcher, EventSettings
from creditgate.store import events
from creditgate.store.store import RedisStore
from tests.cli_support import Cli
from tests.service.test_events import NOW, SECRET, receiver, secret_url

EXIT_PROBLEMS = 5


@pytest.fixture
def cli(settings: RedisSettings) -> Cli:
    cli = Cli(settings)
    cli.env["CREDIT_GATE_EVENT_SECRET"] = SECRET
    return cli


def bury(admin: Admin, store: RedisStore, url: str, accounts: tuple[str, ...] = ("acme", "globex")) -> None:
    admin.apply_plan(Plan(name="pro", period=Period.MONTH, allowance=0))
    for account in accounts:
        admin.subscribe(account, "pro", starts_at=NOW - 86_400)
        admin.grant(account, 10)
        admin.set_alerts(account, Alerts(depleted=True))
        assert store.charge(ChargeRequest(account, 10, now=NOW)).allowed
    Dispatcher(store, EventSettings(urls=(url,), secret=SECRET, attempts=1)).step(now=0)


def test_list_shows_the_letters_of_one_account_with_the_receiver_redacted(
    cli: Cli, admin: Admin, store: RedisStore
) -> None:
    with receiver(fail=10) as hook:
        bury(admin, store, secret_url(hook))
    letters = cli.json("dead-letters", "list", "--account", "globex")
    assert [d["event"]["account"] for d in letters] == ["globex"]
    out = cli.ok("dead-letters", "list").stdout
    assert "acme" in out and "globex" in out
    assert "pa55word" not in out + str(letters) and "t0ps3cret" not in out + str(letters)


def test_replay_sends_one_receivers_letters_counts_them_and_exits_5_on_a_failure(
    cli: Cli, admin: Admin, store: RedisStore
) -> None:
    with receiver(fail=2) as hook:
        bury(admin, store, secret_url(hook))
        assert hook.fail == 0  # it takes events from now on
        shown = cli.json("dead-letters", "list")[0]["url"]
        done = cli.json("dead-letters", "replay", "--receiver", shown)
        assert len(done["delivered"]) == 2 and done["failed"] == [] and done["left"] == 0
        assert sorted(e["account"] for e in hook.got) == ["acme", "globex"]
    with receiver(fail=10) as down:
        bury(admin, store, secret_url(down), ("initech", "umbrella"))
        result = cli.run("dead-letters", "replay")
        assert result.exit_code == EXIT_PROBLEMS and down.refused == 2 + 1  # the rest skipped
        assert "skipped" in result.stdout and "pa55word" not in result.stdout + result.stderr
    figures, waiting = events.delivery_figures(store)
    assert (figures[("replay", "delivered")], figures[("replay", "failed")], waiting) == (2, 1, 2)


def test_replay_without_the_events_secret_is_refused(settings: RedisSettings) -> None:
    result = Cli(settings).run("dead-letters", "replay")
    assert result.exit_code == 1 and "CREDIT_GATE_EVENT_SECRET" in result.stderr


def test_list_pages_through_every_letter_and_with_limit_says_where_to_go_on(
    cli: Cli, store: RedisStore
) -> None:
    from tests.store.test_dead_letters import letter, place

    for i in reversed(range(1_203)):
        events.put_dead_letter(store, letter(i))
    every = cli.json("dead-letters", "list")  # read a page (1000) at a time
    assert [d["id"] for d in every] == [letter(i)["id"] for i in range(1_203)]

    cut = cli.run("dead-letters", "list", "--limit", "2", "--json")
    assert cut.exit_code == 0 and [d["id"] for d in json.loads(cut.stdout)] == [
        letter(0)["id"],
        letter(1)["id"],
    ]
    assert f"--after {place(letter(1))}" in cut.stderr
    rest = cli.run("dead-letters", "list", "--after", place(letter(1)), "--limit", "1201")
    assert rest.exit_code == 0 and letter(2)["id"] in rest.stdout and letter(1)["id"] not in rest.stdout
    assert rest.stderr == ""  # nothing left after it
