"""The README's quick start, played: every request and CLI command it shows gives the output it shows.

Docker cannot run here, so each step runs on what can: a curl request is played through the Kong-protocol
harness against the real plugin server, with kong.yml's own credit-gate entry for that route and consumer
(key-auth's job, turning the `apikey` header into the consumer, is done by :meth:`KongYml.consumer_by_key`)
and the demo data loaded by deploy/demo/seed.sh into a real Redis; the response is rendered as the curl
command prints it (status line, headers, body: the plugin's real answer in Kong's framing). A
`docker compose exec kong credit-gate ...` step runs the real CLI on the same Redis.

Times and ledger ids change from run to run and are compared as placeholders. To print a fresh transcript:

    python -m tests.deploy.test_quickstart
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from creditgate.core.config import RedisSettings
from tests.deploy.test_demo import run_seed
from tests.deploy.test_gate import consumer
from tests.deploy.test_kong_yml import GATE, ROOT, kong_yml
from tests.gate_fixtures import through_gate
from tests.harness import KongRequest, KongSide, Outcome

QUICKSTART = ROOT / "README.md"
BASE = "http://localhost:8000"
REASONS = {
    200: "OK",
    401: "Unauthorized",
    402: "Payment Required",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Block:
    command: str
    output: str

    def text(self) -> str:
        return f"$ {self.command}\n{self.output}"


def normalize(text: str) -> str:
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "<time>", text)
    text = re.sub(r"\b\d{13}-\d+\b", "<ledger id>", text)
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


class Player:
    """Plays the quick start's commands: curl through the harness, the CLI for real."""

    def __init__(self, kong: KongSide, settings: RedisSettings) -> None:
        self.kong = kong
        self.settings = settings

    def request(self, key: str, path: str) -> Outcome:
        route = path.strip("/").split("/")[0]
        username = kong_yml().consumer_by_key(key)
        assert username is not None, f"kong.yml has no key {key}: key-auth would answer 401"
        entry = kong_yml().plugin_for(GATE, route, username)
        assert entry is not None, f"no credit-gate entry for {route}"
        plugin = entry.plugin_config(self.settings.host, self.settings.port)
        return through_gate(self.kong, plugin, KongRequest(path=path, consumer=consumer(username)))

    def headers(self, key: str, path: str) -> Block:
        """``curl -si ... | grep``: the status line and the X-Credit-* headers."""
        outcome = self.request(key, path)
        status = outcome.client_status or 0
        lines = [f"HTTP/1.1 {status} {REASONS[status]}"]
        lines += [
            f"{n}: {v}" for n, v in outcome.response_headers.items() if n.lower().startswith("x-credit-")
        ]
        command = f"curl -si -H 'apikey: {key}' {BASE}{path} | grep -iE '^(HTTP|X-Credit)'"
        return Block(command, "\n".join(lines))

    def statuses(self, key: str, path: str, times: int) -> Block:
        codes = [str(self.request(key, path).client_status) for _ in range(times)]
        command = (
            f"for i in $(seq {times}); do curl -s -o /dev/null -w '%{{http_code}} ' -H 'apikey: {key}' "
            f"{BASE}{path}; done; echo"
        )
        return Block(command, " ".join(codes))

    def body(self, key: str, path: str) -> Block:
        """``curl -s -w '\\n%{http_code} %{content_type}\\n'``: the body, then the status and its type."""
        outcome = self.request(key, path)
        assert outcome.status is not None, "expected the plugin to answer"
        content_type = next(v for n, v in outcome.response_headers.items() if n.lower() == "content-type")
        command = f"curl -s -w '\\n%{{http_code}} %{{content_type}}\\n' -H 'apikey: {key}' {BASE}{path}"
        return Block(command, f"{outcome.client_body.decode()}\n{outcome.client_status} {content_type}")

    def cli(self, *args: str) -> Block:
        env = {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "CREDIT_GATE_REDIS_URL": f"redis://{self.settings.host}:{self.settings.port}/0",
            "COLUMNS": "120",
        }
        result = subprocess.run(
            ["credit-gate", *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        command = "docker compose exec kong " + shlex.join(["credit-gate", *args])
        return Block(command, result.stdout.rstrip("\n"))


def play(player: Player) -> list[tuple[str, Block, Callable[[str], None]]]:
    """The quick start, in its order: (what the step shows, the block, a check of its output)."""

    def expect(*wanted: str) -> Callable[[str], None]:
        def check(output: str) -> None:
            for text in wanted:
                assert text in output, f"{text!r} not in {output!r}"

        return check

    alice, bob = kong_yml().key_of("alice"), kong_yml().key_of("bob")
    return [
        ("accounts", player.cli("accounts"), expect("alice", "starter", "5/5")),
        (
            "first request",
            player.headers(alice, "/basic/get"),
            expect(
                "HTTP/1.1 200 OK",
                "X-Credit-Cost: 1",
                "X-Credit-Allowance-Remaining: 4",
                "X-Credit-Balance: 3",
            ),
        ),
        ("until 402", player.statuses(alice, "/basic/get", 8), expect("200 200 200 200 200 200 200 402")),
        (
            "402 body",
            player.body(alice, "/basic/get"),
            expect('"reason":"insufficient_credit"', "402 application/problem+json"),
        ),
        (
            "top-up",
            player.cli("grant", "alice", "10", "--key", "top-up-1", "--note", "quick start"),
            expect("balance 10"),
        ),
        ("paid again", player.headers(alice, "/basic/get"), expect("HTTP/1.1 200 OK", "X-Credit-Balance: 9")),
        ("balance", player.cli("balance", "alice"), expect("9 credits")),
        (
            "premium",
            player.body(alice, "/premium/get"),
            expect('"reason":"plan_not_entitled"', '"plans":["pro"]'),
        ),
        ("bob", player.headers(bob, "/premium/get"), expect("HTTP/1.1 200 OK", "X-Credit-Cost: 2")),
        (
            "own balance",
            player.body(alice, "/balance"),
            expect(
                '"balance":9', '"allowance_remaining":0', '"warnings":["low_balance"]', "200 application/json"
            ),
        ),
    ]


@pytest.fixture
def steps(kong: KongSide, settings: RedisSettings) -> list[tuple[str, Block, Callable[[str], None]]]:
    run_seed(settings)
    return play(Player(kong, settings))


def test_the_quickstart_shows_what_the_gate_answers(
    steps: list[tuple[str, Block, Callable[[str], None]]],
) -> None:
    doc = normalize(QUICKSTART.read_text(encoding="utf-8"))
    for name, block, check in steps:
        check(block.output)
        assert normalize(block.text()) in doc, (
            f"the README's quick start does not show step '{name}' as played:\n{block.text()}"
        )


def main() -> None:
    """Print the transcript the quick start is written from."""
    from tests.gate_fixtures import PLUGIN_SERVER, start_plugin_server
    from tests.harness import PluginInfo
    from tests.redis_servers import RedisServer

    with tempfile.TemporaryDirectory(prefix="cg-quickstart-") as directory:
        redis_server = RedisServer(Path(directory)).start()
        server = start_plugin_server()
        try:
            settings = RedisSettings(host="127.0.0.1", port=redis_server.port)
            run_seed(settings)
            with KongSide(server.socket_path, PluginInfo.query(PLUGIN_SERVER), timeout=10) as kong:
                for name, block, check in play(Player(kong, settings)):
                    check(block.output)
                    print(f"<!-- {name} -->\n```console\n{block.text()}\n```\n")
        finally:
            server.stop()
            redis_server.stop()


if __name__ == "__main__":
    main()
