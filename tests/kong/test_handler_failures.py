"""The handler's last line of defence: whatever goes wrong, a phase ends with a deliberate answer.

These tests drive ``Gate.access`` directly with a recording stand-in for the PDK object (the Kong side,
not Redis): they cover failures no real Kong or Redis produces on demand. The end-to-end tests cover
everything that can be produced for real.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from creditgate.core.config import RedisSettings
from creditgate.kong.gate import Gate


class RecordingKong:
    """Answers PDK calls like Kong would and records them; ``get_consumer`` returns ``consumer``."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return _Path(self, "kong." + name)


class _Path:
    def __init__(self, root: RecordingKong, path: str) -> None:
        self.root, self.path = root, path

    def __getattr__(self, name: str) -> _Path:
        return _Path(self.root, f"{self.path}.{name}")

    def __call__(self, *args: Any) -> Any:
        self.root.calls.append((self.path, args))
        if self.path == "kong.client.get_consumer":
            return self.root.consumer
        return None


class ExplodingConsumer(Mapping[str, Any]):
    """A consumer whose fields cannot be read: an unexpected error inside the gate."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        return iter(["id"])

    def __len__(self) -> int:
        return 1

    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("boom")


def config(settings: RedisSettings, **changes: Any) -> dict[str, Any]:
    return {"redis": {"host": settings.host, "port": settings.port}, **changes}


def test_an_unexpected_error_becomes_a_500_problem_and_a_log_line(settings: RedisSettings) -> None:
    kong = RecordingKong(ExplodingConsumer())
    Gate(config(settings)).access(kong)
    methods = [m for m, _ in kong.calls]
    assert methods == ["kong.client.get_consumer", "kong.log.err", "kong.response.exit"]
    status, body, headers = kong.calls[-1][1]
    assert status == 500
    assert json.loads(body)["reason"] == "internal_error"
    assert headers["Content-Type"] == "application/problem+json"


def test_the_first_thing_a_phase_does_is_a_pdk_call(settings: RedisSettings) -> None:
    kong = RecordingKong({"id": "acme"})
    Gate(config(settings)).access(kong)
    assert kong.calls[0][0] == "kong.client.get_consumer"


def test_an_invalid_config_never_raises_and_refuses_every_request_with_500(settings: RedisSettings) -> None:
    gate = Gate(config(settings, payment_url="not-a-url"))
    kong = RecordingKong({"id": "acme"})
    gate.access(kong)
    assert kong.calls[0][0] == "kong.client.get_consumer"
    status, body, _ = kong.calls[-1][1]
    assert status == 500 and json.loads(body)["reason"] == "misconfigured"
    assert any("payment_url" in str(args) for m, args in kong.calls if m == "kong.log.err")


def test_nothing_follows_an_exit(settings: RedisSettings) -> None:
    kong = RecordingKong(None)
    Gate(config(settings)).access(kong)
    assert kong.calls[-1][0] == "kong.response.exit"
    assert kong.calls[-1][1][0] == 401
