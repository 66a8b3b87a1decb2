"""The CLI never shows a Redis password, and takes one from a file so that `ps` never shows it either.

Through the installed console script (real exit codes and stderr) against a real Redis whose ACL user
needs the password.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from creditgate.core.config import RedisSettings
from tests.cli_support import Cli
from tests.redis_servers import RedisServer

PASSWORD = "Zq9-vault"


@pytest.fixture
def protected(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[str]:
    """An ACL user ``ops`` whose password is ``PASSWORD``; yields the URL without the password."""
    redis_client.acl_setuser(
        "ops", reset=True, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], categories=["+@all"]
    )
    yield f"redis://ops@127.0.0.1:{redis_server.port}/0"
    redis_client.acl_deluser("ops")


@pytest.mark.parametrize("special", ["/", "#", "?", "/#?"])
def test_a_password_with_url_delimiters_is_never_echoed(settings: RedisSettings, special: str) -> None:
    password = f"{PASSWORD}{special}tail9x"
    url = f"redis://ops:{password}@127.0.0.1:{settings.port}/0"
    result = Cli(settings).script("--redis-url", url, "accounts")

    assert result.returncode == 1
    assert "percent-encoded" in result.stderr and "--redis-password-file" in result.stderr
    for piece in (PASSWORD, "tail9x", "Zq9"):
        assert piece not in result.stderr + result.stdout


def test_a_password_is_not_echoed_when_redis_cannot_be_reached(settings: RedisSettings) -> None:
    url = f"redis://ops:{PASSWORD}%2Fx@127.0.0.1:1/0"
    result = Cli(settings).script("--redis-url", url, "--timeout", "0.2", "accounts")

    assert result.returncode == 4
    assert PASSWORD not in result.stderr


def test_a_wrong_password_is_not_echoed(settings: RedisSettings, protected: str) -> None:
    url = protected.replace("ops@", "ops:wrong-Zq9@")
    result = Cli(settings).script("--redis-url", url, "accounts")

    assert result.returncode == 4
    assert "wrong-Zq9" not in result.stderr


def test_the_password_is_read_from_a_file(settings: RedisSettings, protected: str, tmp_path: Path) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")
    args = ["--redis-url", protected, "--redis-password-file", str(secret), "accounts"]
    result = Cli(settings).script(*args)

    assert result.returncode == 0, result.stderr
    assert not any(PASSWORD in arg for arg in args)  # nothing for `ps` to show


def test_the_password_file_can_be_named_by_the_environment(
    settings: RedisSettings, protected: str, tmp_path: Path
) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD)
    env = {"CREDIT_GATE_REDIS_URL": protected, "CREDIT_GATE_REDIS_PASSWORD_FILE": str(secret)}
    result = Cli(settings).script("accounts", env=env)

    assert result.returncode == 0, result.stderr


def test_without_the_password_the_protected_redis_refuses(settings: RedisSettings, protected: str) -> None:
    result = Cli(settings).script("--redis-url", protected, "accounts")
    assert result.returncode == 4


def test_a_password_given_twice_is_refused(settings: RedisSettings, protected: str, tmp_path: Path) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD)
    url = protected.replace("ops@", "ops:other-Zq9@")
    result = Cli(settings).script("--redis-url", url, "--redis-password-file", str(secret), "accounts")

    assert result.returncode == 1
    assert "given twice" in result.stderr
    assert "other-Zq9" not in result.stderr and PASSWORD not in result.stderr


def test_an_empty_password_file_is_refused(settings: RedisSettings, protected: str, tmp_path: Path) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text("\n")
    result = Cli(settings).script("--redis-url", protected, "--redis-password-file", str(secret), "accounts")

    assert result.returncode == 1
    assert "is empty" in result.stderr
