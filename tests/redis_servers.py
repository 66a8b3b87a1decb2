"""Real redis-server processes for the tests, on free loopback ports, in temporary directories.

Nothing here touches a Redis the machine already runs. A missing redis-server fails the test run
loudly: the tests never skip and never stand in for Redis.

- ``RedisServer``: one server, optionally TLS-only (``tls=TlsFiles``), which a test may stop, pause,
  resume and restart.
- ``RedisClusterServers``: a Redis Cluster of masters made with ``redis-cli --cluster create``.
- ``SentinelSet``: a master, a replica and three sentinels that fail over for real.

Every group starts within a bounded time and stops all its processes, also when its start fails.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import redis
from redis.cluster import ClusterNode, RedisCluster

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


_GIVEN_PORTS: set[int] = set()
# pytest-xdist runs the suite in several processes, each drawing ports from the kernel: a port one of
# them was given and has not bound yet could be given to another. Each keeps to its own share of ports.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
T = TypeVar("T")


def free_port() -> int:
    """A loopback port nothing listens on, never the same twice in a run: the kernel may hand a just
    released port out again, and two servers of one group must not race for it."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        # By port // 2: the kernel may prefer odd ports for bind() and leave the even ones to connect().
        if port not in _GIVEN_PORTS and (port // 2) % _WORKERS == _WORKER:
            _GIVEN_PORTS.add(port)
            return port


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.05,
    logs: tuple[Path, ...] = (),
) -> None:
    """Poll ``condition`` until it holds; fail loudly, naming ``what`` and showing the servers' logs,
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.exceptions.RedisError, OSError) as error:
            last = error
        time.sleep(interval)
    tails = "".join(
        f"\n--- {log}\n" + "\n".join(log.read_text().splitlines()[-15:]) for log in logs if log.exists()
    )
    raise RuntimeError(f"timed out after {timeout} s waiting for {what} (last error: {last!r}){tails}")


@dataclass(frozen=True)
class TlsFiles:
    """A CA and a server certificate signed by it, as PEM files."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path, names: tuple[str, ...], ips: tuple[str, ...] = ()) -> TlsFiles:
    """A throw-away CA and a server certificate for ``names`` (DNS) and ``ips``, made with cryptography."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "credit-gate test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


class RedisServer:
    """One redis-server on 127.0.0.1:<port>, with its data and log in ``directory``.

    With ``tls`` the server listens on ``port`` for TLS only (plain TCP off) and ``client()`` speaks
    TLS, trusting the test CA. With ``unix_socket`` it listens on that socket path too.
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        extra: list[str] | None = None,
        *,
        tls: TlsFiles | None = None,
        unix_socket: Path | None = None,
    ) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError(
                "redis-server is not installed: `apt-get install redis-server` (the tests need it)"
            )
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = extra or []
        self.tls = tls
        self.unix_socket = unix_socket
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def argv(self) -> list[str]:
        if self.tls is None:
            listen = ["--port", str(self.port)]
        else:
            listen = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls.cert),
                "--tls-key-file",
                str(self.tls.key),
                "--tls-ca-cert-file",
                str(self.tls.ca),
                "--tls-auth-clients",
                "no",
                # Replication and the cluster bus speak TLS too (a replica, a Cluster node).
                "--tls-replication",
                "yes",
                *(["--tls-cluster", "yes"] if "--cluster-enabled" in self.extra else []),
            ]
        return [
            str(REDIS_SERVER),
            "--bind",
            "127.0.0.1",
            *listen,
            *(["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"] if self.unix_socket else []),
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(self.log),
            *self.extra,
        ]

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                # The pid, not a PING: a server already on this port would answer a PING too.
                with self.client() as client:
                    if int(client.info("server")["process_id"]) == self.process.pid:
                        return self
            except redis.exceptions.RedisError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        log = self.log.read_text() if self.log.exists() else ""
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")

    def client(self, **options: Any) -> redis.Redis:
        if self.tls is not None:
            options = {
                "ssl": True,
                "ssl_ca_certs": str(self.tls.ca),
                "ssl_check_hostname": False,  # the certificate names the server, not 127.0.0.1
                **options,
            }
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2, **options
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def pause(self) -> None:
        assert self.process
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process
        os.kill(self.process.pid, signal.SIGCONT)

    def command_calls(self, client: redis.Redis) -> Counter[str]:
        """Calls per command the server has run (INFO commandstats, a script's own commands included),
        but for the asking client's PING and INFO. Two PINGs first: a server just resumed accepts the
        connections made while it was paused in one turn of its event loop and reads them in the next."""
        client.ping()
        client.ping()
        stats = client.info("commandstats")
        calls = Counter(
            {name.removeprefix("cmdstat_"): int(counts["calls"]) for name, counts in stats.items()}
        )
        del calls["ping"], calls["info"]
        return calls

    def while_paused(self, requests: Callable[[], list[T]]) -> tuple[list[T], Counter[str]]:
        """``requests`` run while the server is paused, and the commands they sent it: a paused server
        runs what it was sent once resumed, so the count after resuming holds them. This counts round
        trips where a test would otherwise time them: an answer "at once" is one that sent Redis nothing."""
        with self.client() as client:
            before = self.command_calls(client)
            self.pause()
            try:
                answers = requests()
            finally:
                self.resume()
            return answers, self.command_calls(client) - before

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash, without telling its replicas."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def _stop_all(servers: list[RedisServer]) -> None:
    for server in servers:
        if server.process and server.process.poll() is None:
            server.resume()  # a paused server ignores SIGTERM until resumed
        server.stop()


class RedisClusterServers:
    """A Redis Cluster of ``masters`` masters, each with ``replicas`` replicas, on loopback, created
    with redis-cli.

    With ``tls`` every node listens on TLS only, its cluster bus included.
    """

    def __init__(
        self,
        directory: Path,
        masters: int = 3,
        *,
        replicas: int = 0,
        tls: TlsFiles | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.tls = tls
        self.masters = masters
        self.replicas = replicas
        if REDIS_CLI is None:
            raise RuntimeError(
                "redis-cli is not installed: `apt-get install redis-tools` (the tests need it)"
            )
        self.servers = [
            RedisServer(
                directory / f"node{i}",
                extra=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    # The bus port defaults to port + 10000, out of range for a high free port.
                    "--cluster-port",
                    str(free_port()),
                    # A replica's first sync would wait 5 s for more replicas (as in SentinelSet), and
                    # CLUSTER SLOTS lists a replica only once its offset moved, at its master's first
                    # ping (every 10 s by default).
                    "--repl-diskless-sync-delay",
                    "0",
                    "--repl-ping-replica-period",
                    "1",
                    *(extra or []),
                ],
                tls=tls,
            )
            for i in range(masters * (1 + replicas))
        ]

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", server.port) for server in self.servers]

    def start(self, timeout: float = 20) -> RedisClusterServers:
        try:
            for server in self.servers:
                server.start()
            create = subprocess.run(
                [
                    str(REDIS_CLI),
                    *(["--tls", "--cacert", str(self.tls.ca)] if self.tls else []),
                    "--cluster",
                    "create",
                    *(f"{host}:{port}" for host, port in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}{create.stderr}")
            wait_until(
                self._settled,
                timeout,
                "every cluster node to report cluster_state:ok",
                logs=tuple(s.log for s in self.servers),
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _settled(self) -> bool:
        for server in self.servers:
            with server.client() as client:
                info = client.cluster("INFO")  # parsed into a dict by redis-py
                slots = client.execute_command("CLUSTER SLOTS")
                if info.get("cluster_state") != "ok" or len(slots) != self.masters:
                    return False
                ranges = slots.values() if isinstance(slots, dict) else slots
                known = [len(r["replicas"]) if isinstance(r, dict) else len(r) - 3 for r in ranges]
                if any(count != self.replicas for count in known):
                    return False  # every replica known to every node
        return True

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def client(self) -> RedisCluster:
        tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls else {}
        return RedisCluster(
            # redis-py leaves ClusterNode.__init__ unannotated.
            startup_nodes=[cast(Any, ClusterNode)(host, port) for host, port in self.nodes],
            socket_timeout=2,
            socket_connect_timeout=2,
            **tls,
        )

    def stop(self) -> None:
        _stop_all(self.servers)


class SentinelServer(RedisServer):
    """A redis-server in sentinel mode, watching one master under ``name``."""

    def __init__(self, directory: Path, name: str, master: RedisServer, down_after_ms: int) -> None:
        super().__init__(directory, tls=master.tls)
        self.name = name
        self.master_port = master.port
        self.down_after_ms = down_after_ms
        self.myid = os.urandom(20).hex()
        self.known: list[str] = []

    def argv(self) -> list[str]:
        # Sentinel rewrites its config file (what it learns of replicas and peers): one per sentinel.
        conf = self.directory / "sentinel.conf"
        if self.tls is None:
            listen = f"port {self.port}\n"
        else:  # TLS only, to clients and to the master it watches
            listen = (
                f"port 0\ntls-port {self.port}\ntls-cert-file {self.tls.cert}\n"
                f"tls-key-file {self.tls.key}\ntls-ca-cert-file {self.tls.ca}\n"
                "tls-auth-clients no\ntls-replication yes\n"
            )
        conf.write_text(
            listen + "bind 127.0.0.1\n"
            f"dir {self.directory}\n"
            f"logfile {self.log}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.name} 10000\n"
            f"sentinel parallel-syncs {self.name} 1\n"
            f"sentinel myid {self.myid}\n" + "".join(f"{line}\n" for line in self.known)
        )
        return [str(REDIS_SERVER), str(conf), "--sentinel"]


class SentinelSet:
    """A master, one replica and three sentinels (quorum 2) on loopback; all TLS only with ``tls``."""

    def __init__(
        self,
        directory: Path,
        name: str = "credit-gate",
        down_after_ms: int = 500,
        *,
        tls: TlsFiles | None = None,
    ) -> None:
        self.name = name
        # Redis 7 waits 5 s (repl-diskless-sync-delay) for more replicas before a first full sync.
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        self.master = RedisServer(directory / "master", extra=fast_sync, tls=tls)
        self.replica = RedisServer(
            directory / "replica",
            extra=["--replicaof", "127.0.0.1", str(self.master.port), *fast_sync],
            tls=tls,
        )
        self.sentinels = [
            SentinelServer(directory / f"sentinel{i}", name, self.master, down_after_ms) for i in range(3)
        ]
        # Told up front what they would otherwise learn from the master's INFO (every 10 s) and from
        # each other's hello messages (every 2 s): the set is ready to fail over as soon as it starts.
        for sentinel in self.sentinels:
            sentinel.known = [f"sentinel known-replica {name} 127.0.0.1 {self.replica.port}"] + [
                f"sentinel known-sentinel {name} 127.0.0.1 {peer.port} {peer.myid}"
                for peer in self.sentinels
                if peer is not sentinel
            ]

    @property
    def sentinel_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def start(self, timeout: float = 20) -> SentinelSet:
        try:
            self.master.start()
            self.replica.start()
            wait_until(
                self._replica_in_sync,
                timeout,
                "the replica to sync with the master",
                logs=(self.master.log, self.replica.log),
            )
            for sentinel in self.sentinels:
                sentinel.start()
            # A failover needs the sentinels to know the replica and each other (they find each
            # other through hello messages on the master, every 2 s).
            wait_until(
                self._sentinels_ready,
                timeout,
                "the sentinels to find the replica and each other",
                logs=tuple(s.log for s in self.sentinels),
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _replica_in_sync(self) -> bool:
        with self.replica.client() as client:
            status: object = client.info("replication").get("master_link_status")
            return status == "up"

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                state = client.sentinel_master(self.name)  # parsed into a dict by redis-py
                if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                    return False
        return True

    def master_address(self) -> tuple[str, int]:
        """The master's address as the first sentinel that answers reports it."""
        for sentinel in self.sentinels:
            if sentinel.process and sentinel.process.poll() is None:
                with sentinel.client() as client:
                    host, port = client.sentinel_get_master_addr_by_name(self.name)
                    return str(host.decode() if isinstance(host, bytes) else host), int(port)
        raise RuntimeError("no sentinel is running")

    def wait_for_new_master(self, old_port: int, timeout: float = 20) -> tuple[str, int]:
        wait_until(lambda: self.master_address()[1] != old_port, timeout, "the sentinels to fail over")
        return self.master_address()

    def stop(self) -> None:
        _stop_all([*self.sentinels, self.replica, self.master])
