# One command runs every check, the same one CI runs: `make check`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup check lint types test schema bench

setup:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'

check: lint types test

lint:
	$(VENV)/bin/ruff check kong_plugins tests bench
	$(VENV)/bin/ruff format --check kong_plugins tests bench

types:
	$(VENV)/bin/mypy

test:
	$(PY) -m pytest -q -p no:cacheprovider

schema:
	$(PY) -m creditgate.kong_schema > schemas/plugin-config.schema.json

bench:
	$(PY) -m bench $(ARGS)
