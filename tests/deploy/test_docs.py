"""The documentation points at things that exist, and its install steps run as written.

Every cross-reference between the docs, the code and the tests is checked here: a relative link (and its
#anchor) resolves, a repository path named in a doc, a comment or a docstring exists, and a test named in
one is a test of the suite. The native-Kong install steps of docs/install.md (which the README repeats)
are replayed into a temporary directory, with ``sudo`` dropped and the system paths moved there.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from creditgate.ops import kong_conf as deploy
from tests.deploy.test_kong_yml import ROOT
from tests.gate_fixtures import PLUGIN_SERVER
from tests.harness import PluginInfo

DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = [
    *DOCS,
    ROOT / "Dockerfile",
    ROOT / "docker-compose.yml",
    ROOT / "Makefile",
    ROOT / "kong.yml",
    ROOT / "pyproject.toml",
    *sorted((ROOT / ".ci").iterdir()),
    *sorted((ROOT / "kong_plugins").rglob("*.py")),
    *sorted((ROOT / "kong_plugins").rglob("*.lua")),
    *sorted((ROOT / "tests").glob("*.py")),
    *sorted((ROOT / "bench").glob("*.py")),
    *sorted((ROOT / "deploy").rglob("*.sh")),
]
INSTALL = ROOT / "docs" / "install.md"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf-8"))
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def links(path: Path) -> list[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf-8"))
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(doc: Path) -> None:
    for link in links(doc):
        if re.match(r"[a-z]+:", link):
            continue  # a URL: not this repository's
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: link to {link}: no such file"
        if anchor:
            assert path.suffix == ".md", link
            assert anchor in anchors(path), f"{doc.name}: link to {link}: no such heading in {path.name}"


PATH = re.compile(r"(?<![\w/.-])((?:tests|docs|kong_plugins|bench|deploy|schemas|\.ci)/[\w./-]*[\w/])")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_a_file_names_exists(source: Path) -> None:
    text = source.read_text(encoding="utf-8")
    for match in PATH.finditer(text):
        named = match.group(1)
        following = text[match.end() : match.end() + 1]
        if following in "*<{" and following:
            continue  # a pattern (tests/test_deploy_*), not a path
        assert (ROOT / named).exists(), f"{source.relative_to(ROOT)} names {named}, which does not exist"


def defined_tests() -> set[str]:
    names = {path.stem for path in (ROOT / "tests").rglob("test_*.py")}
    for path in (ROOT / "tests").rglob("*.py"):
        names |= set(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.MULTILINE))
    return names


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_test_a_file_names_is_in_the_suite(source: Path) -> None:
    known = defined_tests()
    text = source.read_text(encoding="utf-8")
    for match in re.finditer(r"(?<![\w.])(test_[a-z0-9_]+)(?![\w*(])", text):
        name = match.group(1)
        if ROOT / "tests" in source.parents and re.search(rf"def {name}\b", text):
            continue
        assert name in known, f"{source.relative_to(ROOT)} names {name}, which is not a test of the suite"


# The install steps for a native Kong


def install_block() -> list[tuple[str, str]]:
    """(command, the output shown under it) of docs/install.md's install steps."""
    text = INSTALL.read_text(encoding="utf-8")
    block = text.split("<!-- install:start -->\n```console\n", 1)[1].split("```\n<!-- install:end -->", 1)[0]
    steps: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], ""))
        else:
            command, output = steps[-1]
            steps[-1] = (command, output + line + "\n")
    return steps


def test_the_readme_shows_the_same_install_steps() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command, _ in install_block()[:-1]:
        assert f"$ {command}\n" in readme, command


@pytest.mark.server
def test_the_install_steps_run_as_written(tmp_path: Path) -> None:
    """Each step, with `sudo` dropped and /opt, /usr/local/bin and /etc/kong moved into a temporary
    directory, in a copy of the source; the outputs are the ones the page shows."""
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", "dist", "build"),
        symlinks=True,
    )
    system = tmp_path / "system"
    (system / "bin").mkdir(parents=True)
    (system / "etc").mkdir()
    moves = {
        "/opt/credit-gate": str(system / "opt" / "credit-gate"),
        "/usr/local/bin/": str(system / "bin") + "/",
        "/etc/kong/kong.conf": str(system / "etc" / "kong.conf"),
        # A shell without PATH finds the link in /usr/local/bin; here the link is in system/bin.
        "/bin/sh -c 'credit-gate-pluginserver": f"/bin/sh -c '{system / 'bin'}/credit-gate-pluginserver",
    }
    env = {"PATH": f"{system / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    for command, shown in install_block():
        command = command.replace("sudo ", "")
        for old, new in moves.items():
            command = command.replace(old, new)
        words = shlex.split(command)
        if words[0] == "python3":  # the reader's Python 3.10+: here, the suite's own
            command = shlex.join([sys.executable, *words[1:]])
        result = subprocess.run(
            ["/bin/sh", "-c", command],
            cwd=source,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"
        assert result.stdout == shown, f"{command}: printed\n{result.stdout}\nthe page shows\n{shown}"
    conf = (system / "etc" / "kong.conf").read_text(encoding="utf-8")
    assert conf == deploy.kong_conf("/usr/local/kong")
    # The linked query command, as Kong runs it (no PATH at all), prints the dump Kong parses.
    dump = subprocess.run(
        ["env", "-i", str(system / "bin" / "credit-gate-pluginserver"), "--dump"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    assert PluginInfo.from_dump(json.loads(dump)).name == "credit-gate"


@pytest.mark.server
def test_the_redis_passwords_are_referenceable_in_the_schema_kong_reads() -> None:
    """What lets `{vault://env/...}` stand for the password: Kong resolves references only in fields
    the plugin's schema marks `referenceable`."""
    info = PluginInfo.query(PLUGIN_SERVER)
    config = next(f["config"] for f in info.schema["fields"] if "config" in f)
    redis = next(f["redis"] for f in config["fields"] if "redis" in f)
    flagged = {name for field in redis["fields"] for name, spec in field.items() if spec.get("referenceable")}
    assert flagged == {"password", "sentinel_password"}


def test_the_readme_lists_every_document() -> None:
    listed = set(re.findall(r"\]\((docs/[^)#]+\.md)\)", section(ROOT / "README.md", "## Documentation")))
    assert listed == {f"docs/{doc.name}" for doc in (ROOT / "docs").glob("*.md")}


def test_the_quick_start_asks_for_every_port_compose_publishes() -> None:
    """Those of the services `docker compose up` starts (not the ones behind a profile)."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))["services"]
    published = {
        str(port).split(":")[-2]
        for service in services.values()
        if not service.get("profiles")
        for port in service.get("ports", ())
    }
    needs = section(ROOT / "README.md", "## Quick start").split("\n\n")[1]
    assert published and published <= set(re.findall(r"\b(\d{4,5})\b", needs)), (published, needs)


def section(path: Path, heading: str) -> str:
    """The text under ``heading`` down to the next heading of its level."""
    text = path.read_text(encoding="utf-8")
    start = text.index(heading + "\n")
    level = heading.split(" ")[0] + " "
    end = text.find("\n" + level, start + len(heading))
    return text[start : end if end != -1 else len(text)]
