"""Installing on an existing Kong: the wheel and the sdist, installed into a fresh virtual environment and run
the way Kong runs them.

The package is built as a release is (``python -m build``: a wheel and an sdist), the wheel is installed with
pip into a new virtual environment (its dependencies at the versions constraints.txt pins), and its console
scripts are run with an EMPTY environment (``env -i``), by absolute path: an nginx worker clears its
environment, so the commands Kong starts get no PATH, no HOME and no virtual environment. The README's
install section for a native Kong is replayed the same way, as far as it runs without Kong.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from creditgate.ops import kong_conf as deploy
from tests.deploy.test_kong_yml import ROOT
from tests.harness import PluginInfo

pytestmark = pytest.mark.server  # its tests start servers or processes (tests/conftest.py)

CONSTRAINTS = ROOT / "constraints.txt"
INSTALL_DOC = ROOT / "docs" / "install.md"


def run(command: list[str], *, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"
    return result.stdout


def empty_env(command: list[str]) -> str:
    """As Kong's worker starts a command: ``env -i``, nothing inherited."""
    return run(["env", "-i", *command], timeout=120)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build`` of a copy of the checkout (the sdist first, the wheel from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    return out


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment with the wheel installed by pip, pinned by constraints.txt: its bin/."""
    root = tmp_path_factory.mktemp("kong-venv") / "credit-gate"
    venv.create(root, with_pip=True)
    (wheel,) = dist.glob("credit_gate-*.whl")
    run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS), str(wheel)])
    yield root / "bin"
    shutil.rmtree(root, ignore_errors=True)


def test_the_build_makes_a_wheel_and_an_sdist_with_the_plugin_the_scripts_and_the_schemas(dist: Path) -> None:
    (wheel,) = dist.glob("credit_gate-*-py3-none-any.whl")
    (sdist,) = dist.glob("credit_gate-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert "credit_gate.py" in names
    assert "creditgate/store/lua/charge.lua" in names
    assert "creditgate/schemas/plugin-config.schema.json" in names
    for page in (
        "index.html",
        "dashboard.js",
        "dashboard.css",
        "vendor/chart.umd.min.js",
        "vendor/LICENSE.chart.js.txt",
    ):
        assert f"creditgate/service/static/{page}" in names  # the dashboard, served from the package
    assert not any(n.startswith("tests/") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "credit-gate-pluginserver = credit_gate:main" in scripts
    assert "credit-gate = creditgate.cli:main" in scripts
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    assert any(m.endswith("/kong_plugins/creditgate/store/lua/charge.lua") for m in members)
    # The source the README's quick start and install steps run in.
    inside = {m.split("/", 1)[1] for m in members if "/" in m}
    for needed in (
        "constraints.txt",
        "kong.yml",
        "Dockerfile",
        ".dockerignore",
        "docker-compose.yml",
        "Makefile",
        ".ci/system-tools",
        "deploy/demo/seed.sh",
        "docs/install.md",
        "schemas/plugin-config.schema.json",
    ):
        assert needed in inside, needed


def test_the_installed_plugin_server_dumps_its_info_with_an_empty_environment(installed: Path) -> None:
    """The query command, as Kong runs it: stdout is the plugin info list Kong parses."""
    dump = json.loads(empty_env([str(installed / "credit-gate-pluginserver"), "--dump"]))
    info = PluginInfo.from_dump(dump)
    assert (info.name, info.priority, info.phases) == ("credit-gate", 1, ("access",))


def test_the_installed_cli_runs_with_an_empty_environment(installed: Path) -> None:
    assert "Usage: credit-gate" in empty_env([str(installed / "credit-gate"), "--help"])
    conf = empty_env([str(installed / "credit-gate"), "kong-conf"])
    assert conf.splitlines() == [f"{name} = {value}" for name, value in deploy.settings("/usr/local/kong")]
    help_text = empty_env([str(installed / "credit-gate-pluginserver"), "--help"])
    assert "--log-phase" in help_text


def test_the_wheel_also_installs_from_a_source_path_and_a_git_url(tmp_path: Path) -> None:
    """pip's other two ways in: a directory, and a git URL (a local clone stands in for the host)."""
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], timeout=120)
    # The checkout's own uncommitted state is what the rest of the suite tests; the clone is HEAD.
    for source in (str(clone), f"git+file://{clone}"):
        out = tmp_path / re.sub(r"\W", "_", source)[-20:]
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), source])
        (wheel,) = out.glob("credit_gate-*.whl")
        assert "credit_gate.py" in zipfile.ZipFile(wheel).namelist()


# constraints.txt: what the image and `make setup` install


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate():
                (spec,) = requirement.specifier
                assert spec.operator == "==", line
                found[requirement.name.lower().replace("_", "-")] = spec.version
    return found


def declared() -> list[Requirement]:
    """The package's dependencies and its test extra, as the installed metadata declares them."""
    requirements = [Requirement(text) for text in metadata.requires("credit-gate") or []]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": "test"})]


def test_constraints_pin_every_dependency_within_what_pyproject_allows() -> None:
    pinned = pins()
    for requirement in declared():
        name = requirement.name.lower().replace("_", "-")
        assert name in pinned, f"constraints.txt does not pin {name} (make constraints)"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (requirement, pinned[name])


def test_the_suite_runs_on_the_pinned_versions() -> None:
    """`make setup` installs with -c constraints.txt: what the tests import is what the image installs."""
    for name, version in pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # pinned for another platform or Python (markers), or not needed here
        assert installed == version, f"{name} {installed} installed, constraints.txt pins {version}"


# `make setup`'s interpreter check (the README's Development section)

OLD_PYTHON = """#!/bin/sh
case "$2" in
  *platform*) echo 3.9.18 ;;
  *version_info*) exit 1 ;;
  *) exit 0 ;;
esac
"""


def make_setup(python: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", "setup", f"PYTHON={python}", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_setup_with_a_python_that_does_not_run_says_so_and_installs_nothing(tmp_path: Path) -> None:
    done = make_setup(str(tmp_path / "python3.12"), tmp_path)
    assert done.returncode != 0
    assert "does not run" in done.stderr and "older" not in done.stderr
    assert "pyenv" in done.stderr and not (tmp_path / "venv").exists()


def test_setup_with_an_old_python_names_its_version(tmp_path: Path) -> None:
    old = tmp_path / "python3.9"
    old.write_text(OLD_PYTHON)
    old.chmod(0o755)
    done = make_setup(str(old), tmp_path)
    assert done.returncode != 0
    assert "is Python 3.9.18" in done.stderr and "runs on 3.10 to 3.12" in done.stderr
    assert not (tmp_path / "venv").exists()


def test_pip_installs_on_the_pythons_the_docs_list_and_no_other() -> None:
    """README and docs/install.md list 3.10 to 3.12 (CI runs 3.10 and 3.12): the package says the same."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (spec,) = re.findall(r'^requires-python = "([^"]+)"', text, re.MULTILINE)
    allowed = SpecifierSet(spec)
    assert [v for v in ("3.9", "3.10", "3.11", "3.12", "3.13") if allowed.contains(f"{v}.0")] == [
        "3.10",
        "3.11",
        "3.12",
    ]
    assert "Python 3.10 to 3.12" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Python 3.10, 3.11 or 3.12" in (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
