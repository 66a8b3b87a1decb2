"""A Redis URL or node written by an operator is read exactly or refused with what was wrong: never
quietly replaced by a default, never read from digits a reader would not take for a number."""

from __future__ import annotations

import pytest

from creditgate.errors import ConfigError
from creditgate.ops.redis_url import parse_node, settings_from_url


def test_a_url_without_a_port_means_the_redis_port() -> None:
    assert settings_from_url("redis://cache.internal/2").port == 6379


def test_port_0_is_refused_rather_than_taken_for_the_default() -> None:
    with pytest.raises(ConfigError, match=r"^redis\.port must be a whole number from 1 to 65535, got 0$"):
        settings_from_url("redis://cache.internal:0/0")


@pytest.mark.parametrize("database", ["\u0663", "\uff11", "1\u0663"])
def test_a_database_in_digits_of_another_script_is_refused(database: str) -> None:
    with pytest.raises(ConfigError, match="database must be a number from 0 to 15"):
        settings_from_url(f"redis://cache.internal:6379/{database}")


@pytest.mark.parametrize("node", ["s1:\u0663", "s1:\uff16\uff13\uff17\uff19", "s1:0", "s1:65536", "s1:"])
def test_a_node_port_that_is_not_an_ascii_port_number_is_refused(node: str) -> None:
    with pytest.raises(ConfigError, match="must be HOST:PORT"):
        parse_node(node, "--sentinel")


def test_a_node_is_read_as_written() -> None:
    assert parse_node("[::1]:26379", "--sentinel") == {"host": "::1", "port": 26379}
