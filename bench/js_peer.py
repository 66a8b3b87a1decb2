"""The peer row: Kong's JavaScript plugin server (npm ``kong-pdk`` 0.6.0) running the baseline's PDK calls.

``bench/js/plugins/baseline.js`` makes the calls of ``bench/baseline_plugin.py`` in JavaScript. The
server is the package's ``kong-js-pluginserver``, Kong's ``pluginserver_<name>_start_cmd`` for
JavaScript: one server for every plugin of a directory (``--plugins-directory``), not a dedicated
server per plugin as kong-pdk's Python one; it listens on ``--kong-prefix`` / ``--sock-name`` and
speaks the same MessagePack RPC (``plugin.StartInstance``, ``plugin.HandleEvent``, ``plugin.Step*``,
its ``listener.js`` and ``server.js``).

``npm ci`` installs ``bench/js/package-lock.json`` once into a cache directory outside the repository
(``$CREDIT_GATE_BENCH_CACHE``, or ``$XDG_CACHE_HOME/credit-gate-bench``, or ``~/.cache/...``), one
directory per lock, so that ``node_modules`` never enters the work tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.procs import BenchError

JS_DIR = Path(__file__).with_name("js")
PLUGINS = JS_DIR / "plugins"
PLUGIN = "baseline"  # bench/js/plugins/baseline.js's Name
PACKAGE = "kong-pdk"
# V8 compiles a function after it has run a while: the first requests run interpreted. Before its first
# window the JS server gets at least this many requests (instructions per request settle after a few
# thousand; under callgrind the count moves by a few % while it is below that).
WARMUP = 3_000
# Between its windows the server idles while the other rows are measured (20 to 60 s under callgrind).
# V8's memory reducer acts on a heap that stops growing: its memory-reducing collection throws away the
# compiled code, and the windows after it executed 1.0 M instructions a request instead of 270,000
# until thousands more requests compiled it again. A server Kong keeps busy does not get there.
NODE_FLAGS = ("--no-memory-reducer",)
_INSTALLED = ".installed"


def cache_root() -> Path:
    chosen = os.environ.get("CREDIT_GATE_BENCH_CACHE")
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "credit-gate-bench"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"the JavaScript peer row needs {name} (Node.js 18+), or run with --no-js")
    return found


def install() -> Path:
    """``node_modules`` of ``bench/js/`` as its lock pins it, installed on first use."""
    manifest, lock = (JS_DIR / "package.json").read_bytes(), (JS_DIR / "package-lock.json").read_bytes()
    digest = hashlib.sha256(manifest + b"\0" + lock).hexdigest()[:16]
    root = cache_root()
    target = root / f"js-{digest}"
    if (target / _INSTALLED).exists():
        return target / "node_modules"
    npm = _tool("npm")
    root.mkdir(parents=True, exist_ok=True)
    # Installed aside and renamed into place: a directory with the mark is complete.
    staging = Path(tempfile.mkdtemp(prefix=f"js-{digest}-", dir=root))
    try:
        (staging / "package.json").write_bytes(manifest)
        (staging / "package-lock.json").write_bytes(lock)
        argv = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]
        done = subprocess.run(argv, cwd=staging, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise BenchError(f"npm ci of bench/js failed:\n{done.stdout}{done.stderr}")
        (staging / _INSTALLED).write_text("")
        try:
            staging.rename(target)
        except OSError:  # another run installed it meanwhile
            if not (target / _INSTALLED).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / "node_modules"


def server_argv() -> list[str]:
    """``node kong-js-pluginserver --plugins-directory bench/js/plugins`` (the socket flags are added
    by ``procs.PluginServer``), with ``NODE_FLAGS``."""
    node = _tool("node")
    script = install() / PACKAGE / "bin" / "kong-js-pluginserver"
    return [node, *NODE_FLAGS, str(script), "--plugins-directory", str(PLUGINS)]


def versions() -> dict[str, Any]:
    """Node's version and the locked kong-pdk's, for the machine line."""
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    package = lock["packages"].get(f"node_modules/{PACKAGE}", {}).get("version", "-")
    node = shutil.which("node")
    version = "-"
    if node is not None:
        done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False)
        version = done.stdout.strip().lstrip("v") or "-"
    return {"node": version, "kong_js_pdk": package}
