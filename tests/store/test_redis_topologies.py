"""The gate on every Redis topology it supports, each a real set of servers on loopback.

Standalone over TLS (certificates made here), a 3-master Redis Cluster, a Sentinel set that fails
over during a run, and an ACL user with only the permissions docs/redis.md documents.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict, cast

import pytest
import redis
from redis.crc import key_slot

from credit_gate import Schema
from creditgate.core.config import RedisSettings, parse_config
from creditgate.core.kong_schema import validate
from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.core.redis_settings import Node, parse_redis
from creditgate.errors import ConfigError, StoreError
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore
from tests.counting_listener import CountingListener
from tests.gate_fixtures import through_gate
from tests.harness import KongRequest, KongSide, Outcome
from tests.redis_servers import (
    RedisClusterServers,
    RedisServer,
    SentinelSet,
    TlsFiles,
    make_tls_files,
)

ROOT = Path(__file__).parents[2]


# Typed, so that `**TIMEOUTS` type-checks as RedisSettings' keyword arguments too.
class Timeouts(TypedDict):
    connect_timeout: int
    read_timeout: int


TIMEOUTS = Timeouts(connect_timeout=500, read_timeout=500)


def consumer(account: str) -> dict[str, Any]:
    return {"id": account, "username": account, "custom_id": None}


def seed(admin: Admin, accounts: list[str], credits: int = 100) -> None:
    admin.apply_plan(Plan("pro", period=Period.NONE, allowance=0))
    for account in accounts:
        admin.subscribe(account, "pro", starts_at=admin.now() - 10)
        admin.grant(account, credits)


def charge_through_gate(kong: KongSide, redis_config: dict[str, Any], account: str, cost: int = 1) -> Outcome:
    request = KongRequest(consumer=consumer(account))
    return through_gate(kong, RedisSettings(**TIMEOUTS), request, clean=False, redis=redis_config, cost=cost)


# The redis record's rules across fields (pure).


def test_sentinel_nodes_take_kongs_default_port_and_the_master_name() -> None:
    settings = parse_redis({"sentinel_master": "main", "sentinel_nodes": [{"host": "s1"}, {"port": 5000}]})
    assert settings.topology == "sentinel"
    assert settings.sentinel_nodes == (Node("s1", 26379), Node("127.0.0.1", 5000))


def test_cluster_nodes_use_kongs_ip_field() -> None:
    settings = parse_redis({"cluster_nodes": [{"ip": "10.0.0.1", "port": 7000}]})
    assert settings.topology == "cluster"
    assert settings.cluster_nodes == (Node("10.0.0.1", 7000),)


@pytest.mark.parametrize(
    ("redis_record", "message"),
    [
        ({"sentinel_master": "main"}, "sentinel_nodes is empty"),
        ({"sentinel_nodes": [{"host": "s1"}]}, "sentinel_master is not"),
        ({"sentinel_password": "x"}, "without redis.sentinel_master"),
        (
            {"sentinel_master": "m", "sentinel_nodes": [{"host": "s"}], "cluster_nodes": [{"ip": "c"}]},
            "choose one topology",
        ),
        ({"cluster_nodes": [{"ip": "c"}], "database": 3}, "only database 0"),
        ({"cluster_nodes": [{"ip": "c"}], "ssl": True, "server_name": "r"}, "server_name cannot"),
        ({"cluster_nodes": [{"ip": "c"}, {"ip": "c"}]}, "lists a node twice"),
        ({"socket_path": "redis.sock"}, "must be an absolute path"),
        ({"socket_path": "/run/redis.sock", "ssl": True}, "TLS on TCP ports only"),
        ({"socket_path": "/run/redis.sock", "cluster_nodes": [{"ip": "c"}]}, "cannot be combined"),
        (
            {"socket_path": "/run/redis.sock", "sentinel_master": "m", "sentinel_nodes": [{"host": "s"}]},
            "cannot be combined",
        ),
    ],
)
def test_contradictory_topology_settings_are_refused_with_an_operators_message(
    redis_record: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_redis(redis_record)


def test_kong_fills_the_node_records_defaults_and_the_plugin_accepts_them() -> None:
    filled, errors = validate(Schema, {"redis": {"cluster_nodes": [{"port": 7001}, {"ip": "10.0.0.2"}]}})
    assert errors == []
    assert filled["redis"]["cluster_nodes"] == [
        {"ip": "127.0.0.1", "port": 7001},
        {"ip": "10.0.0.2", "port": 6379},
    ]
    assert parse_config(filled).redis.cluster_max_redirections == 5


# Redis Cluster: three masters, accounts spread over every slot range.


def cluster_record(cluster: RedisClusterServers) -> dict[str, Any]:
    return {"cluster_nodes": [{"ip": host, "port": port} for host, port in cluster.nodes], **TIMEOUTS}


@pytest.fixture
def cluster_admin(cluster: RedisClusterServers) -> Iterator[Admin]:
    """An operator on the session's Redis Cluster, emptied by ``cluster`` (tests/conftest.py)."""
    admin = Admin(RedisStore.from_settings(parse_redis(cluster_record(cluster))))
    yield admin
    admin.close()


def slot_owners(cluster: RedisClusterServers) -> dict[int, int]:
    """Slot -> port of the master that holds it."""
    with cluster.servers[0].client() as client:
        owners: dict[int, int] = {}
        for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
            owners.update(dict.fromkeys(range(start, end + 1), int(master[1])))
        return owners


@pytest.mark.server
def test_cluster_charges_accounts_spread_over_every_master(
    cluster: RedisClusterServers, cluster_admin: Admin
) -> None:
    accounts = [f"acct-{i}" for i in range(30)]
    seed(cluster_admin, accounts)
    store = cluster_admin.store
    results = [store.charge(ChargeRequest(a, 7, now=int(time.time()))) for a in accounts]
    assert all(r.allowed and r.balance == 93 for r in results)
    owners = slot_owners(cluster)
    masters = {owners[key_slot(store.keys.account(a).state.encode())] for a in accounts}
    assert masters == {server.port for server in cluster.servers}
    assert {a.account for a in cluster_admin.accounts()} == set(accounts)


@pytest.mark.server
def test_cluster_keeps_every_key_of_an_account_on_the_accounts_slot(
    cluster: RedisClusterServers, cluster_admin: Admin
) -> None:
    seed(cluster_admin, ["acme"])
    now = int(time.time())
    assert cluster_admin.store.charge(ChargeRequest("acme", 3, now=now)).allowed
    keys = cluster_admin.store.keys.account("acme")
    names = [keys.state, keys.ledger, keys.idempotency, keys.usage(now)]
    slots = {key_slot(name.encode()) for name in names}
    assert len(slots) == 1
    owner = slot_owners(cluster)[slots.pop()]
    # A plain client on the owning master: a key held elsewhere would answer MOVED, not 1.
    with redis.Redis(port=owner) as node:
        assert [node.exists(name) for name in (keys.state, keys.ledger, keys.usage(now))] == [1, 1, 1]
    assert cluster_admin.verify_ledger("acme").ok


@pytest.mark.server
def test_cluster_reloads_the_scripts_after_script_flush_on_every_master(
    cluster: RedisClusterServers, cluster_admin: Admin
) -> None:
    seed(cluster_admin, ["acme", "bravo"])
    assert cluster_admin.store.charge(ChargeRequest("acme", 1, now=int(time.time()))).allowed
    for server in cluster.servers:
        with server.client() as node:
            node.script_flush()
    assert cluster_admin.store.charge(ChargeRequest("acme", 1, now=int(time.time()))).balance == 98
    assert cluster_admin.store.charge(ChargeRequest("bravo", 1, now=int(time.time()))).balance == 99


@pytest.mark.server
def test_cluster_store_built_while_the_cluster_is_unreachable_works_once_it_answers(
    cluster: RedisClusterServers, cluster_admin: Admin
) -> None:
    seed(cluster_admin, ["acme"])
    for server in cluster.servers:
        server.pause()
    try:
        store = RedisStore.from_settings(
            parse_redis({**cluster_record(cluster), "connect_timeout": 100, "read_timeout": 100})
        )
        with pytest.raises(StoreError):
            store.charge(ChargeRequest("acme", 1, now=int(time.time())))
    finally:
        for server in cluster.servers:
            server.resume()
    assert store.charge(ChargeRequest("acme", 1, now=int(time.time()))).balance == 99
    store.close()


def test_cluster_charges_through_the_plugin_server(
    kong: KongSide, cluster: RedisClusterServers, cluster_admin: Admin
) -> None:
    accounts = [f"gate-{i}" for i in range(12)]
    seed(cluster_admin, accounts)
    for account in accounts:
        outcome = charge_through_gate(kong, cluster_record(cluster), account, cost=5)
        assert outcome.proxied, outcome.body
    assert {cluster_admin.account(a).balance for a in accounts} == {95}


# Sentinel: one master, one replica, three sentinels (quorum 2).


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    servers = SentinelSet(tmp_path / "sentinel").start()
    yield servers
    servers.stop()


def sentinel_record(servers: SentinelSet, **extra: Any) -> dict[str, Any]:
    return {
        "sentinel_master": servers.name,
        "sentinel_nodes": [{"host": host, "port": port} for host, port in servers.sentinel_nodes],
        **TIMEOUTS,
        **extra,
    }


@pytest.mark.server
def test_sentinel_charges_on_the_master_the_sentinels_name(sentinels: SentinelSet) -> None:
    admin = Admin(RedisStore.from_settings(parse_redis(sentinel_record(sentinels))))
    try:
        seed(admin, ["acme"])
        assert admin.store.charge(ChargeRequest("acme", 4, now=int(time.time()))).balance == 96
        with sentinels.master.client() as master:
            assert int(master.hget(admin.store.keys.account("acme").state, "balance") or 0) == 96
    finally:
        admin.close()


def test_sentinel_failover_costs_a_short_window_of_503s_and_charges_resume_correctly(
    kong: KongSide, sentinels: SentinelSet, capsys: pytest.CaptureFixture[str]
) -> None:
    record = sentinel_record(sentinels)
    admin = Admin(RedisStore.from_settings(parse_redis(record)))
    seed(admin, ["acme"], credits=10_000)
    acknowledged = 20
    for _ in range(acknowledged):
        assert charge_through_gate(kong, record, "acme").proxied
    # The replica has every acknowledged charge here; replication is asynchronous, so a charge
    # acknowledged in the instant before the kill could be lost (docs/redis.md says so).
    wait_replicated(sentinels)
    old_port = sentinels.master.port
    sentinels.master.kill()
    killed_at = time.monotonic()
    statuses: list[tuple[float, int | None]] = []
    while time.monotonic() - killed_at < 20:
        outcome = charge_through_gate(kong, record, "acme")
        statuses.append((time.monotonic() - killed_at, outcome.status))
        if outcome.status is not None:
            assert outcome.status == 503 and json.loads(outcome.body)["reason"] == "store_unavailable"
        if len(statuses) >= 5 and all(s is None for _, s in statuses[-5:]):
            break
        time.sleep(0.01)
    assert sentinels.master_address()[1] != old_port
    refused = [t for t, status in statuses if status == 503]
    after = [t for t, status in statuses if status is None]
    assert refused, "the kill went unnoticed: no request failed"
    assert after, "charging never resumed on the promoted replica"
    window = after[0]
    assert all(t < window for t in refused), "a request failed after charging had resumed"
    with capsys.disabled():
        print(
            f"\nsentinel failover (down-after 500 ms): {len(refused)} requests answered 503 over "
            f"{window:.2f} s after the master died; charging resumed on the promoted replica"
        )
    # No request answered 503 was charged, and every charge acknowledged before the kill survived.
    acknowledged += len(after)
    assert admin.account("acme").balance == 10_000 - acknowledged
    # Every charge acknowledged after the failover is on the new master, exactly once.
    for _ in range(10):
        assert charge_through_gate(kong, record, "acme", cost=3).proxied
    assert admin.account("acme").balance == 10_000 - acknowledged - 30
    assert admin.verify_ledger("acme").ok
    admin.close()


def wait_replicated(servers: SentinelSet) -> None:
    with servers.master.client() as master:
        offset = master.info("replication")["master_repl_offset"]
    deadline = time.monotonic() + 5
    with servers.replica.client() as replica:
        while replica.info("replication").get("slave_repl_offset", 0) < offset:
            if time.monotonic() > deadline:  # a guard against hanging, not a speed bound
                pytest.fail("the replica did not catch up")
            time.sleep(0.02)


# TLS: a CA and a certificate for redis.test, made for this run; Redis listens on TLS only.


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"), names=("redis.test",))


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("tls-redis"), tls=tls_files).start()
    yield server
    server.stop()


@pytest.fixture
def tls_clean(tls_redis: RedisServer) -> RedisServer:
    with tls_redis.client() as client:
        client.flushall()
    return tls_redis


def tls_record(server: RedisServer, files: TlsFiles, **extra: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "ssl": True,
        "ca_file": str(files.ca),
        "server_name": "redis.test",
        **TIMEOUTS,
        **extra,
    }


def test_tls_redis_charges_with_the_certificate_checked_against_server_name(
    kong: KongSide, tls_clean: RedisServer, tls_files: TlsFiles
) -> None:
    record = tls_record(tls_clean, tls_files)
    admin = Admin(RedisStore.from_settings(parse_redis(record)))
    try:
        seed(admin, ["tls-acme"])
        assert charge_through_gate(kong, record, "tls-acme", cost=2).proxied
        assert admin.account("tls-acme").balance == 98
    finally:
        admin.close()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"server_name": "other.test"}, "certificate issued for another name"),
        ({"server_name": None}, "certificate does not name 127.0.0.1"),
        ({"ca_file": None}, "certificate from a CA the system does not trust"),
        ({"ssl": False}, "plain TCP to a TLS-only port"),
    ],
)
@pytest.mark.server
def test_tls_redis_refuses_what_it_cannot_verify(
    tls_redis: RedisServer, tls_files: TlsFiles, change: dict[str, Any], why: str
) -> None:
    store = RedisStore.from_settings(parse_redis(tls_record(tls_redis, tls_files) | change))
    try:
        with pytest.raises(StoreError):
            store.account_state("tls-acme")
    finally:
        store.close()


@pytest.mark.server
def test_tls_with_ssl_verify_off_accepts_any_certificate(tls_redis: RedisServer, tls_files: TlsFiles) -> None:
    record = tls_record(tls_redis, tls_files, ssl_verify=False, ca_file=None, server_name=None)
    store = RedisStore.from_settings(parse_redis(record))
    try:
        assert store.account_state("nobody").exists is False
    finally:
        store.close()


# ACL: a user with only the permissions docs/redis.md documents.

ACL_PASSWORD = "s3cret-for-tests"


def documented_acl(prefix: str = "credit-gate") -> list[str]:
    """The ``ACL SETUSER`` line of docs/redis.md, as arguments, with the test's password."""
    text = (ROOT / "docs" / "redis.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith("ACL SETUSER credit-gate "))
    args = shlex.split(line)[3:]  # after ACL SETUSER <user>
    return [
        f">{ACL_PASSWORD}" if a.startswith(">") else a.replace("credit-gate:", f"{prefix}:") for a in args
    ]


@pytest.fixture(params=[0, 3], ids=["db0", "db3"])  # a database other than 0 needs SELECT
def acl_settings(
    request: pytest.FixtureRequest, redis_server: RedisServer, redis_client: redis.Redis
) -> Iterator[RedisSettings]:
    command = cast(Any, redis_client).execute_command  # redis-py leaves it unannotated
    command("ACL", "SETUSER", "credit-gate", "reset", *documented_acl())
    yield RedisSettings(
        port=redis_server.port,
        username="credit-gate",
        password=ACL_PASSWORD,
        database=request.param,
        **TIMEOUTS,
    )
    command("ACL", "DELUSER", "credit-gate")


def test_the_documented_acl_lets_the_operators_api_and_the_gate_work(
    kong: KongSide, acl_settings: RedisSettings, redis_client: redis.Redis
) -> None:
    admin = Admin(RedisStore.from_settings(acl_settings))
    try:
        seed(admin, ["acme", "bravo"])
        redis_client.script_flush()  # the user's own SCRIPT LOAD must bring the scripts back
        record = {
            "port": acl_settings.port,
            "username": "credit-gate",
            "password": ACL_PASSWORD,
            "database": acl_settings.database,
        }
        assert charge_through_gate(kong, record, "acme", cost=10).proxied
        assert admin.view("acme").balance == 90
        admin.adjust_down("bravo", 5)
        assert admin.change_plan("bravo", "pro") == "pro"
        assert [a.account for a in admin.accounts()] == ["acme", "bravo"]
        assert len(admin.ledger("acme")) == 2
        assert admin.verify_ledger("acme").ok
        now = admin.now()
        assert admin.usage(since=now - 86_400, until=now + 86_400)
        assert [e.account for e in admin.ledger_entries(accounts=["bravo"])] == ["bravo", "bravo"]
        admin.apply_plan(Plan("spare"))
        admin.delete_plan("spare")
        assert [p.name for p in admin.plans()] == ["pro"]
    finally:
        admin.close()


def test_the_documented_acl_lets_the_service_keep_page_and_drop_dead_letters(
    acl_settings: RedisSettings, redis_server: RedisServer
) -> None:
    from creditgate.ops.dead_letters import letter_page
    from creditgate.store import events
    from tests.store.test_dead_letters import letter

    with redis_server.client(db=acl_settings.database) as client:  # a letter the order does not hold
        client.hset("credit-gate:events:dead", "f" * 24, "kept by a version before the order")
    admin = Admin(RedisStore.from_settings(acl_settings))
    try:
        for i in range(3):
            events.put_dead_letter(admin.store, letter(i))
        events.put_dead_letter(admin.store, letter(0, second=9))
        assert events.drop_dead_letter(admin.store, letter(1)["id"])
        page = letter_page(admin, limit=1)
        assert (page.letters, page.waiting) == ([letter(2)], 3) and page.next
        assert letter_page(admin, after=page.next).letters == [letter(0, 9)]
    finally:
        admin.close()


def test_the_documented_acl_refuses_keys_outside_the_prefix(
    redis_server: RedisServer, acl_settings: RedisSettings
) -> None:
    with redis_server.client(username="credit-gate", password=ACL_PASSWORD) as user:
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.set("other-app:secret", "1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.execute_command("FLUSHALL")
    other_prefix = RedisStore.from_settings(acl_settings, prefix="other-app")
    try:
        with pytest.raises(StoreError, match="permission"):
            other_prefix.account_state("acme")
    finally:
        other_prefix.close()


def test_the_documented_acl_allows_every_command_the_scripts_call() -> None:
    allowed = {a[1:].lower() for a in documented_acl() if a.startswith("+")}
    lua = ROOT / "kong_plugins" / "creditgate" / "store" / "lua"
    called = {
        name.lower()
        for path in lua.glob("*.lua")
        for name in re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"]", path.read_text())
    }
    assert called, "no redis.call found: the pattern no longer matches the scripts"
    assert called <= allowed, f"add to the ACL in docs/redis.md: {sorted(called - allowed)}"


def test_the_documented_acl_allows_every_command_the_store_sends() -> None:
    allowed = {a[1:].lower() for a in documented_acl() if a.startswith("+")}
    store = ROOT / "kong_plugins" / "creditgate" / "store"
    source = "".join(path.read_text() for path in sorted(store.glob("*.py")))
    sent = {name.lower() for name in re.findall(r"_run\(\s*\"(\w+)\"", source)}
    methods = set(re.findall(r"pipe\.(\w+)\(", source)) - {"execute", "execute_command"}
    sent |= {"del" if name == "delete" else name for name in methods}  # redis-py's name for DEL
    sent |= {name.lower() for name in re.findall(r"pipe\.execute_command\(\s*\"(\w+)\"", source)}
    assert sent, "no command found: the patterns no longer match the store"
    assert sent <= allowed, f"add to the ACL in docs/redis.md: {sorted(sent - allowed)}"


# A Redis on this host, through its unix socket.


@pytest.fixture(scope="module")
def unix_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    # A socket path must stay under 108 bytes: pytest's directories can be longer.
    directory = Path(tempfile.mkdtemp(prefix="cg-unix-"))
    server = RedisServer(tmp_path_factory.mktemp("unix-redis"), unix_socket=directory / "redis.sock").start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


def test_a_unix_socket_redis_charges_through_the_plugin_server(
    kong: KongSide, unix_redis: RedisServer
) -> None:
    record = {"socket_path": str(unix_redis.unix_socket), **TIMEOUTS}
    admin = Admin(RedisStore.from_settings(parse_redis(record)))
    try:
        account = f"unix-{uuid.uuid4().hex[:8]}"  # the module runs once per concurrency mode
        seed(admin, [account], credits=5)
        outcomes = [charge_through_gate(kong, record, account, cost=2) for _ in range(3)]
        assert [o.proxied for o in outcomes] == [True, True, False]
        assert admin.account(account).balance == 1
        with unix_redis.client() as client:
            assert client.info("clients")["connected_clients"] >= 1
    finally:
        admin.close()


def test_a_unix_socket_that_is_not_there_answers_503_at_once(kong: KongSide, tmp_path: Path) -> None:
    path = tmp_path / "no-redis.sock"
    record = {"socket_path": str(path), **TIMEOUTS}
    outcome = charge_through_gate(kong, record, "nobody")
    assert outcome.status == 503
    # At once: a missing socket fails the connect itself (no timeout waited for), and a request tries
    # one connection, never again after a back-off: a listener at that path counts them.
    assert any("No such file or directory" in line for line in outcome.logs("err"))
    with CountingListener.unix(path) as listener:
        assert charge_through_gate(kong, record, "nobody").status == 503
    assert listener.attempts == 1


# TLS with Sentinel and with Cluster: every connection (to the sentinels, to the master, to each
# Cluster node) is TLS, its certificate checked against the test CA. Sentinels report the master by
# address and Cluster nodes announce theirs, so the certificate names 127.0.0.1.


@pytest.fixture(scope="module")
def ip_tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls-ip"), names=("redis.test",), ips=("127.0.0.1",))


def test_sentinel_over_tls_charges_on_the_master_with_every_certificate_checked(
    kong: KongSide, tmp_path: Path, ip_tls_files: TlsFiles
) -> None:
    servers = SentinelSet(tmp_path / "sentinels", tls=ip_tls_files).start()
    try:
        record = sentinel_record(servers, ssl=True, ca_file=str(ip_tls_files.ca))
        admin = Admin(RedisStore.from_settings(parse_redis(record)))
        try:
            seed(admin, ["tls-sentinel"])
            assert charge_through_gate(kong, record, "tls-sentinel", cost=3).proxied
            assert admin.account("tls-sentinel").balance == 97
            with servers.master.client() as master:  # on the master the sentinels name
                assert master.hget("credit-gate:{tls-sentinel}:account", "balance") == b"97"
        finally:
            admin.close()
    finally:
        servers.stop()


def test_sentinel_over_tls_refuses_sentinels_it_cannot_verify(
    kong: KongSide, tmp_path: Path, ip_tls_files: TlsFiles
) -> None:
    servers = SentinelSet(tmp_path / "sentinels", tls=ip_tls_files).start()
    try:
        record = sentinel_record(servers, ssl=True)  # no ca_file: the test CA is not trusted
        assert charge_through_gate(kong, record, "tls-sentinel").status == 503
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def tls_cluster(
    tmp_path_factory: pytest.TempPathFactory, ip_tls_files: TlsFiles
) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path_factory.mktemp("tls-cluster"), tls=ip_tls_files).start()
    yield servers
    servers.stop()


def test_cluster_over_tls_charges_accounts_on_every_master(
    kong: KongSide, tls_cluster: RedisClusterServers, ip_tls_files: TlsFiles
) -> None:
    record = {**cluster_record(tls_cluster), "ssl": True, "ca_file": str(ip_tls_files.ca)}
    admin = Admin(RedisStore.from_settings(parse_redis(record)))
    try:
        # Four fresh accounts on each master, picked by slot: twelve random names miss a master
        # about once in forty runs.
        by_master: dict[int, list[str]] = {}
        with tls_cluster.client() as client:
            while min((len(names) for names in by_master.values()), default=0) < 4 or len(by_master) < 3:
                account = f"tls-{uuid.uuid4().hex[:8]}"
                port = client.get_node_from_key(admin.store.keys.account(account).state).port
                by_master.setdefault(port, []).append(account)
        accounts = [name for names in by_master.values() for name in names[:4]]
        seed(admin, accounts)
        for account in accounts:
            assert charge_through_gate(kong, record, account, cost=4).proxied
        assert {admin.account(a).balance for a in accounts} == {96}
        assert len(by_master) == 3
    finally:
        admin.close()


# Redis Cluster failover: a master dies, its replica takes its slots over.


def test_cluster_failover_costs_a_short_window_of_503s_on_the_dead_masters_slots_only(
    kong: KongSide, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/redis.md: with Redis's default (yes) every node refuses while a slot is uncovered.
    cluster = RedisClusterServers(
        tmp_path / "cluster", masters=3, replicas=1, extra=["--cluster-require-full-coverage", "no"]
    ).start()
    admin = None
    try:
        record = cluster_record(cluster)
        admin = Admin(RedisStore.from_settings(parse_redis(record)))
        accounts = [f"fo-{i}" for i in range(12)]
        seed(admin, accounts, credits=1_000)
        with cluster.client() as client:
            owner = {a: client.get_node_from_key(f"credit-gate:{{{a}}}:account").port for a in accounts}
            victim_port = owner["fo-0"]
            victim = cluster.server_on(victim_port)
            with victim.client() as master:
                # Every write so far on the replica too: replication is asynchronous (docs/redis.md).
                assert master.execute_command("WAIT", 1, 5_000) == 1
        on_victim = [a for a in accounts if owner[a] == victim_port]
        elsewhere = [a for a in accounts if owner[a] != victim_port]
        assert elsewhere, "every account landed on one master"
        victim.kill()
        killed_at = time.monotonic()
        statuses: list[tuple[float, int | None]] = []
        other_charges = 0
        while time.monotonic() - killed_at < 20:
            outcome = charge_through_gate(kong, record, "fo-0")
            statuses.append((time.monotonic() - killed_at, outcome.status))
            if outcome.status is not None:
                assert outcome.status == 503 and json.loads(outcome.body)["reason"] == "store_unavailable"
            # A gate started after the kill: accounts on the other masters are charged all along.
            assert charge_through_gate(kong, record, elsewhere[0]).proxied
            other_charges += 1
            if len(statuses) >= 5 and all(s is None for _, s in statuses[-5:]):
                break
            time.sleep(0.02)
        refused = [t for t, status in statuses if status == 503]
        after = [t for t, status in statuses if status is None]
        assert refused, "the kill went unnoticed: no request failed"
        assert after, "charging did not resume on the promoted replica"
        window = after[0]
        assert all(t < window for t in refused), "a request failed after charging had resumed"
        with capsys.disabled():
            print(
                f"\ncluster failover (node timeout 1000 ms): {len(refused)} requests on the dead master's "
                f"slots answered 503 over {window:.2f} s; the other masters' accounts were charged throughout"
            )
        # No refused request was charged; every acknowledged one is there once. Read as an operator
        # would, with the CLI (a new client): the old one learns the new map from its next error.
        admin.close()
        admin = Admin(RedisStore.from_settings(parse_redis(record)))
        assert admin.account("fo-0").balance == 1_000 - len(after)
        assert admin.account(elsewhere[0]).balance == 1_000 - other_charges
        for account in [*on_victim, *elsewhere]:
            assert admin.verify_ledger(account).ok
    finally:
        if admin is not None:
            admin.close()
        cluster.stop()


def documented_cluster_acl() -> list[str]:
    """The ACL line of docs/redis.md with what its Cluster note adds."""
    text = (ROOT / "docs" / "redis.md").read_text()
    note = next(line for line in text.splitlines() if line.startswith("- On Redis Cluster add "))
    extra = re.findall(r"\+[a-z|]+", note.split("`")[1])
    return [*documented_acl(), *extra]


def test_the_documented_cluster_acl_lets_the_gate_charge_with_a_master_down(
    kong: KongSide, tmp_path: Path
) -> None:
    cluster = RedisClusterServers(
        tmp_path / "cluster",
        masters=3,
        extra=["--user", "credit-gate", *documented_cluster_acl(), "--cluster-require-full-coverage", "no"],
    ).start()
    try:
        operator = Admin(RedisStore.from_settings(parse_redis(cluster_record(cluster))))  # default user
        accounts = [f"acl-{i}" for i in range(9)]
        seed(operator, accounts)
        operator.close()
        record = {**cluster_record(cluster), "username": "credit-gate", "password": ACL_PASSWORD}
        for server in cluster.servers:  # scripts unknown everywhere: the gate must send them itself
            with server.client() as client:
                client.script_flush()
        with cluster.client() as client:
            owner = {a: client.get_node_from_key(f"credit-gate:{{{a}}}:account").port for a in accounts}
        dead = owner[accounts[0]]
        cluster.server_on(dead).kill()
        for account in accounts:
            outcome = charge_through_gate(kong, record, account, cost=2)
            assert outcome.proxied == (owner[account] != dead), outcome.body
    finally:
        cluster.stop()


@pytest.mark.server
def test_cluster_routes_a_payment_in_its_slot_and_applies_it_in_the_accounts(
    cluster: RedisClusterServers, cluster_admin: Admin
) -> None:
    """The payments ledger's two steps each run in one slot (``{stripe}``, then the account's), also when
    the two slots live on different masters; a refund that came first waits and is applied."""
    from creditgate.core.payments import REFUND, Reversal
    from creditgate.store import payments

    seed(cluster_admin, ["acme"])
    store = cluster_admin.store
    refund = Reversal("re_1", REFUND, 50, "succeeded", 1)
    assert payments.route(store, ["pi_1", "ch_1"], "", [refund]).state == "waiting"
    found = payments.route(store, ["cs_1", "pi_1"], "acme", [])
    assert (found.state, found.account) == ("owned", "acme")
    applied = payments.apply(store, "acme", found.key, now=1, pay=(100, "usd", 1000), waiting=found.waiting)
    payments.settled(store, found.key)
    assert (applied.granted, applied.taken) == (1000, 500)
    assert cluster_admin.account("acme").balance == 100 + 500
    assert cluster_admin.verify_ledger("acme").ok
