"""A page of the dead letters (ops/dead_letters.py ``letter_page``): oldest first from where the page
before stopped, its cost bounded by the page and never by how many letters wait, with or without an
account or a receiver to match."""

from __future__ import annotations

import redis

from creditgate.ops.admin import Admin
from creditgate.ops.dead_letters import PAGE_READ, find_letters, letter_page
from creditgate.store import events as stored
from creditgate.store.store import RedisStore
from tests.redis_servers import RedisServer
from tests.store.test_dead_letters import letter, place


def test_pages_list_every_letter_once_oldest_first_each_reading_only_its_own(
    admin: Admin, store: RedisStore, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    for i in reversed(range(1_050)):
        stored.put_dead_letter(store, letter(i, account=f"acct-{i % 3}"))
    listed, after, costs = [], None, []
    while True:
        before = redis_server.command_calls(redis_client)
        page = letter_page(admin, after=after, limit=100)
        costs.append(redis_server.command_calls(redis_client) - before)
        assert page.waiting == 1_050 and len(page.letters) <= 100
        listed += page.letters
        after = page.next
        if after is None:
            break
        assert after == place(page.letters[-1])
    assert listed == find_letters(admin) and len(costs) == 11  # the last page holds 50
    # One MULTI to count the letters and check their order, then one ZRANGE and one HMGET: no HSCAN.
    assert all(c == {"multi": 1, "exec": 1, "hlen": 1, "zcard": 1, "zrange": 1, "hmget": 1} for c in costs)


def test_a_page_that_ends_where_the_letters_end_has_no_next(admin: Admin, store: RedisStore) -> None:
    for i in range(4):
        stored.put_dead_letter(store, letter(i))
    first = letter_page(admin, limit=2)
    assert [d["id"] for d in first.letters] == [letter(0)["id"], letter(1)["id"]] and first.next
    last = letter_page(admin, after=first.next, limit=2)
    assert [d["id"] for d in last.letters] == [letter(2)["id"], letter(3)["id"]] and last.next is None
    assert letter_page(admin, after=place(letter(3)), limit=2).letters == []
    whole = letter_page(admin)
    assert (len(whole.letters), whole.next, whole.waiting) == (4, None, 4)


def test_a_page_goes_on_from_its_place_when_the_letter_there_was_replayed_meanwhile(
    admin: Admin, store: RedisStore
) -> None:
    for i in range(6):
        stored.put_dead_letter(store, letter(i))
    first = letter_page(admin, limit=3)
    stored.drop_dead_letter(store, first.letters[-1]["id"])  # delivered by a replay
    rest = letter_page(admin, after=first.next, limit=3)
    assert [d["id"] for d in rest.letters] == [letter(i)["id"] for i in (3, 4, 5)]


def test_a_page_matching_an_account_reads_at_most_page_read_letters_and_says_where_to_go_on(
    admin: Admin, store: RedisStore, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A filter that matches few letters would otherwise read them all for one page."""
    for i in range(2_500):
        stored.put_dead_letter(store, letter(i, account="acme"))
    for i in range(2_500, 2_503):
        stored.put_dead_letter(store, letter(i, account="globex"))
    pages = []
    after = None
    while True:
        before = redis_server.command_calls(redis_client)
        page = letter_page(admin, after=after, limit=10, account="globex")
        sent = redis_server.command_calls(redis_client) - before
        assert sent["hmget"] <= 3 and sent["hscan"] == 0
        pages.append(page)
        if page.next is None:
            break
        after = page.next
    assert PAGE_READ == 1_001  # the largest page (1000) and one more, to tell whether there are more
    assert [len(p.letters) for p in pages] == [0, 0, 3]  # 1001 letters read, 1001, then the last 501
    assert pages[0].next == place(letter(1_000)) and pages[1].next == place(letter(2_001))
    assert [d["event"]["account"] for d in pages[2].letters] == ["globex"] * 3


def test_a_page_matching_a_receiver_keeps_only_its_letters(admin: Admin, store: RedisStore) -> None:
    for i in range(5):
        stored.put_dead_letter(store, {**letter(i), "url": f"http://{'a' if i % 2 else 'b'}.test/h"})
    page = letter_page(admin, limit=2, receiver=lambda url: url == "http://b.test/h")
    assert [d["id"] for d in page.letters] == [letter(0)["id"], letter(2)["id"]]
    rest = letter_page(admin, after=page.next, limit=2, receiver=lambda url: url == "http://b.test/h")
    assert [d["id"] for d in rest.letters] == [letter(4)["id"]] and rest.next is None
