"""`GET /v1/events/dead-letters` a page at a time: `limit` (100, 1000 at most) letters oldest first,
`next` the `after` of the following page (null on the last), `waiting` every letter kept; open to a
read-only token, whose request costs the page and not the letters waiting."""

from __future__ import annotations

from typing import Any

from creditgate.core.config import RedisSettings
from creditgate.store import events as stored
from creditgate.store.store import RedisStore
from tests.service_support import READ_TOKEN, Running, running_service
from tests.store.test_dead_letters import letter


def listed(api: Running, **params: Any) -> Any:
    answer = api.call("GET", "/v1/events/dead-letters", token=READ_TOKEN, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_dead_letters_are_listed_a_page_at_a_time_oldest_first(
    settings: RedisSettings, store: RedisStore
) -> None:
    for i in (4, 1, 3, 0, 2):
        stored.put_dead_letter(store, letter(i, account="globex" if i % 2 else "acme"))
    with running_service(settings) as api:
        first = listed(api, limit=2)
        assert [d["id"] for d in first["dead_letters"]] == [letter(0)["id"], letter(1)["id"]]
        assert first["waiting"] == 5 and first["next"]
        second = listed(api, limit=2, after=first["next"])
        third = listed(api, limit=2, after=second["next"])
        assert [d["id"] for d in second["dead_letters"] + third["dead_letters"]] == [
            letter(i)["id"] for i in (2, 3, 4)
        ]
        assert third["next"] is None

        everything = listed(api)  # 100 by default
        assert len(everything["dead_letters"]) == 5 and everything["next"] is None
        acme = listed(api, account="acme", limit=1)
        assert [d["event"]["account"] for d in acme["dead_letters"]] == ["acme"]
        rest = listed(api, account="acme", limit=2, after=acme["next"])
        assert [d["id"] for d in rest["dead_letters"]] == [letter(2)["id"], letter(4)["id"]]
        assert rest["next"] is None and rest["waiting"] == 5  # every letter waiting, matched or not


def test_a_page_over_1000_letters_or_a_cursor_no_page_gave_is_refused_with_422(
    settings: RedisSettings,
) -> None:
    with running_service(settings) as api:
        for params in ({"limit": 0}, {"limit": 1001}, {"limit": "x"}, {"after": "x" * 257}):
            answer = api.call("GET", "/v1/events/dead-letters", token=READ_TOKEN, params=params)
            assert answer.status_code == 422, (params, answer.text)
        assert listed(api, limit=1000, after="2026")["dead_letters"] == []
