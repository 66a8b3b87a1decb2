"""The operators' CLI on Redis Cluster, behind Sentinel and on a unix socket: the plugin's options."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from creditgate.cli import EXIT_INVALID, cli
from tests.redis_servers import RedisClusterServers, RedisServer, SentinelSet


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.server
def test_the_cli_grants_and_reads_balances_on_a_cluster(cluster: RedisClusterServers) -> None:
    nodes = [f"--cluster-node={host}:{port}" for host, port in cluster.nodes[:2]]
    accounts = [f"acct-{i}" for i in range(12)]  # spread over the three masters' slots
    for account in accounts:
        code, _, err = run(*nodes, "grant", account, "7", "--create", "--key", f"k-{account}")
        assert code == 0, err
    for account in accounts:
        code, out, err = run(*nodes, "balance", account, "--json")
        assert code == 0, err
        assert json.loads(out)["balance"] == 7


@pytest.mark.server
def test_the_cli_follows_the_master_the_sentinels_name(tmp_path: Path) -> None:
    servers = SentinelSet(tmp_path / "sentinels").start()
    try:
        sentinels = [f"--sentinel={host}:{port}" for host, port in servers.sentinel_nodes]
        code, out, err = run(
            "--sentinel-master", servers.name, *sentinels, "grant", "acme", "5", "--create", "--json"
        )
        assert code == 0, err
        host, port = servers.master_address()
        assert servers.master.client().hget("credit-gate:{acme}:account", "balance") == b"5"
        assert (host, port) == ("127.0.0.1", servers.master.port)
        assert json.loads(out)["balance"] == 5
    finally:
        servers.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--sentinel=127.0.0.1:26379",), "sentinel_master"),
        (("--sentinel-master=m",), "sentinel_nodes"),
        (("--cluster-node=127.0.0.1",), "HOST:PORT"),
        (("--cluster-node=127.0.0.1:7000", "--sentinel-master=m", "--sentinel=127.0.0.1:1"), "choose one"),
        (("--redis-url=unix://localhost/run/redis.sock",), "names a path, not a host"),
        (("--redis-url=unix:///run/redis.sock?timeout=1",), "only ?db=N"),
        (("--redis-url=unix:///run/redis.sock?db=16",), "0 to 15"),
        (("--redis-url=unix:///run/redis.sock", "--ssl"), "TLS on TCP ports only"),
    ],
)
def test_a_wrong_topology_is_one_clear_line(args: tuple[str, ...], message: str) -> None:
    code, _, err = run(*args, "accounts")
    assert code == EXIT_INVALID
    assert message in err and err.count("\n") == 1


@pytest.mark.server
def test_the_cli_reaches_redis_on_its_unix_socket(tmp_path: Path) -> None:
    directory = Path(tempfile.mkdtemp(prefix="cg-cli-"))  # a socket path must stay under 108 bytes
    server = RedisServer(tmp_path / "redis", unix_socket=directory / "redis.sock").start()
    try:
        url = f"unix://{server.unix_socket}?db=2"
        code, out, err = run("--redis-url", url, "grant", "acme", "5", "--create", "--json")
        assert code == 0, err
        assert json.loads(out)["balance"] == 5
        assert server.client(db=2).hget("credit-gate:{acme}:account", "balance") == b"5"
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
