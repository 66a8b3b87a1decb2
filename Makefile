# One command runs every check, the same one CI runs: `make check`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup check lint types test test-fast schema bench constraints dist

# Everything the checks need, on a fresh Debian or Ubuntu machine with Python 3.10 to 3.12: redis-server,
# decK, valgrind and Chromium from the distribution (.ci/system-tools), then a virtual environment with
# the package and its test tools at the versions constraints.txt pins (the image installs the same pins).
# PYTHON is checked first: one that does not run (not installed, or a pyenv shim of a version pyenv has
# not selected) is told apart from one that is too old.
setup:
	@$(PYTHON) -c 'import sys' >/dev/null 2>&1 \
		|| { echo "error: '$(PYTHON)' does not run: it is not installed, or it is a pyenv shim of a version pyenv has not selected; name the interpreter by its path (make setup PYTHON=<pyenv root>/versions/3.12.x/bin/python3.12) or install Python 3.10 to 3.12" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' \
		|| { echo "error: '$(PYTHON)' is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); credit-gate runs on 3.10 to 3.12: name one (make setup PYTHON=python3.12, or its path)" >&2; exit 1; }
	bash .ci/system-tools
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'

check: lint types test

lint:
	$(VENV)/bin/ruff check kong_plugins tests bench
	$(VENV)/bin/ruff format --check kong_plugins tests bench

types:
	$(VENV)/bin/mypy

# In WORKERS processes (pytest-xdist), one test file to a process at a time, so that a file's fixtures
# start once: most of the suite's time is spent waiting on servers, timeouts and failovers, not computing.
# `make test WORKERS=0` runs it in one process.
WORKERS ?= 2

test:
	$(PY) -m pytest -q -p no:cacheprovider -n $(WORKERS) --dist loadfile

# The tests that start no server and no process (no redis-server, plugin server, uvicorn, browser,
# docker compose, hadolint, decK): seconds. tests/conftest.py marks the others `server`; with
# CREDIT_GATE_TESTS_NO_SERVERS=1 a test that starts one anyway fails, naming the mark it lacks.
test-fast:
	CREDIT_GATE_TESTS_NO_SERVERS=1 $(PY) -m pytest -q -p no:cacheprovider -m "not server"

# The generated JSON Schemas: the plugin's config (from core/schema.py) and the problem body (its
# reasons and statuses from core/decision.py's Reason). Tests fail when a committed file differs.
schema:
	$(PY) -m creditgate.core.kong_schema > schemas/plugin-config.schema.json
	$(PY) -m creditgate.core.problem_schema > schemas/problem.schema.json

bench:
	$(PY) -m bench $(ARGS)

# Re-pin constraints.txt after a change to pyproject.toml's dependencies (one resolution for every
# Python the package supports: markers pick a version per Python where they differ).
constraints:
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --universal --python-version 3.10 \
		--custom-compile-command 'make constraints' -o constraints.txt

# The wheel and the sdist, in dist/.
dist:
	$(PY) -m build --outdir dist .
