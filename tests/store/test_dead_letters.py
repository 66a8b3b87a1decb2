"""The dead letters' order (store/events.py): each letter has one place, ``<dead_at>_<id>``, in a sorted
set written with the letter in one MULTI, so that a page of the list is one ZRANGE and one HMGET however
many letters wait; letters kept before the order existed are given their places on the first read."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
import redis

from creditgate.core.redis_settings import parse_redis
from creditgate.store import events as stored
from creditgate.store.store import RedisStore
from tests.redis_servers import RedisClusterServers, RedisServer


def letter(i: int, second: int | None = None, account: str = "acme") -> dict[str, Any]:
    """Letter ``i``, given up at ``second`` past 2026-01-01T00:00:00Z (``i`` by default)."""
    at = i if second is None else second
    return {
        "id": f"{i:024x}",
        "event": {"id": f"evt_{i}", "type": "balance.low", "account": account},
        "url": "http://x.test/h",
        "attempts": 3,
        "error": "HTTP 503",
        "dead_at": f"2026-01-01T{at // 3600:02d}:{at // 60 % 60:02d}:{at % 60:02d}Z",
    }


def place(d: dict[str, Any]) -> str:
    return f"{d['dead_at']}_{d['id']}"


def order(redis_client: redis.Redis, store: RedisStore) -> list[str]:
    return [p.decode() for p in cast(list[bytes], redis_client.zrange(store.keys.dead_letter_order, 0, -1))]


def test_a_letter_kept_again_moves_to_its_new_place_and_a_dropped_one_leaves_the_order(
    store: RedisStore, redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    for i in (2, 0, 1):
        stored.put_dead_letter(store, letter(i))
    assert order(redis_client, store) == [place(letter(i)) for i in (0, 1, 2)]  # oldest first

    before = redis_server.command_calls(redis_client)
    stored.put_dead_letter(store, letter(0, second=9))  # the same event given up again, later
    sent = redis_server.command_calls(redis_client) - before
    assert order(redis_client, store) == [place(letter(1)), place(letter(2)), place(letter(0, 9))]
    assert (sent["exec"], sent["hset"], sent["zadd"], sent["zrem"]) == (1, 1, 1, 1)  # in one MULTI

    assert stored.drop_dead_letter(store, letter(1)["id"])
    assert not stored.drop_dead_letter(store, letter(1)["id"])
    assert order(redis_client, store) == [place(letter(2)), place(letter(0, 9))]
    assert redis_client.hlen(store.keys.dead_letters) == 2


def test_letters_kept_and_dropped_by_racing_threads_keep_exactly_one_place_each(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    """Each write reads the place it replaces: a write between that read and its MULTI (WATCH) makes
    the MULTI fail and the write start again, so no place is left behind and none is missing."""

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            i = rng.randrange(6)
            if rng.random() < 0.3:
                stored.drop_dead_letter(store, letter(i)["id"])
            else:
                stored.put_dead_letter(store, letter(i, second=rng.randrange(3600)))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(churn, range(16)))
    stored.put_dead_letter(store, letter(7))  # one letter at least, whatever the race left
    kept = [json.loads(v) for v in redis_client.hvals(store.keys.dead_letters)]
    assert order(redis_client, store) == sorted(place(d) for d in kept)


def test_letters_kept_before_the_order_existed_are_put_in_it_on_the_first_read(
    store: RedisStore, redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    kept = [letter(i, second=3599 - i % 3600) for i in range(1_200)]
    for d in kept:  # as a version before the order wrote them: the hash only
        redis_client.hset(store.keys.dead_letters, d["id"], json.dumps(d))
    redis_client.hset(store.keys.dead_letters, "f" * 24, "not json")
    gone = "2020-01-01T00:00:00Z_" + "e" * 24
    redis_client.zadd(store.keys.dead_letter_order, {gone: 0})  # the place of a letter no longer kept

    before = redis_server.command_calls(redis_client)
    assert stored.dead_letters_waiting(store) == 1_201
    sent = redis_server.command_calls(redis_client) - before
    assert sent["hscan"] >= 1_200 // 500 and sent["hgetall"] == 0  # read a batch at a time
    assert order(redis_client, store) == sorted([place(d) for d in kept] + ["_" + "f" * 24])

    before = redis_server.command_calls(redis_client)
    assert stored.dead_letters_waiting(store) == 1_201
    sent = redis_server.command_calls(redis_client) - before
    assert sent["hscan"] == 0 and sent["zadd"] == 0  # in order: the next read only counts


def test_a_page_is_read_from_its_place_in_two_commands_however_many_wait(
    store: RedisStore, redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    kept = [letter(i) for i in range(1_500)]
    for d in kept:
        stored.put_dead_letter(store, d)
    before = redis_server.command_calls(redis_client)
    page = stored.dead_letters_after(store, place(kept[999]), 100)
    sent = redis_server.command_calls(redis_client) - before
    assert [(p, d) for p, d in page] == [(place(d), d) for d in kept[1_000:1_100]]
    assert sent == {"zrange": 1, "hmget": 1}
    assert stored.dead_letters_after(store, place(kept[-1]), 100) == []


def test_a_place_whose_letter_was_dropped_or_moved_since_is_read_as_none(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    """What a page read between its ZRANGE and its HMGET may find; its reader passes over it."""
    stored.put_dead_letter(store, letter(0))
    stored.put_dead_letter(store, letter(1))
    redis_client.hset(store.keys.dead_letters, letter(0)["id"], json.dumps(letter(0, second=9)))
    redis_client.hdel(store.keys.dead_letters, letter(1)["id"])
    assert stored.dead_letters_after(store, "", 10) == [(place(letter(0)), None), (place(letter(1)), None)]


@pytest.mark.server
def test_on_a_cluster_the_letters_and_their_order_share_a_slot(cluster: RedisClusterServers) -> None:
    """On the session's Cluster (tests/conftest.py), emptied first."""
    from redis.crc import key_slot

    record = {"cluster_nodes": [{"ip": h, "port": p} for h, p in cluster.nodes], "read_timeout": 2000}
    store = RedisStore.from_settings(parse_redis(record))
    try:
        keys = store.keys
        assert key_slot(keys.dead_letter_order.encode()) == key_slot(keys.dead_letters.encode())
        assert keys.dead_letter_order.startswith(keys.prefix + ":")  # under the ACL's ~<prefix>:*
        for i in (1, 0, 2):
            stored.put_dead_letter(store, letter(i))
        stored.put_dead_letter(store, letter(0, second=9))
        assert stored.drop_dead_letter(store, letter(1)["id"])
        assert stored.dead_letters_waiting(store) == 2
        assert stored.dead_letters_after(store, "", 10) == [
            (place(letter(2)), letter(2)),
            (place(letter(0, 9)), letter(0, 9)),
        ]
    finally:
        store.close()
