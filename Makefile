# `make run` and `make test` bootstrap .venv on a fresh machine and reuse it afterwards; `make docs`
# serves the documentation.
# `make run` installs what running needs (errands and the embedded database); `make test`,
# `make bench` and `make chaos` add the test, lint and harness tools. `make compose-test` runs
# the compose deployment for real, in containers (deploy/compose-test: root, Docker, Debian).
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEV := $(VENV)/.installed-dev
PYTHON ?= python3
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: run test lint docs bench bench-quick chaos compose-test embedded-database

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[embedded]'
	touch $(INSTALLED)

$(DEV): $(INSTALLED)
	$(PIP) -e '.[embedded,dev]'
	touch $(DEV)

run: $(INSTALLED)
	$(BIN)/errands run

lint: $(DEV)
	$(BIN)/ruff check errands tests deploy docs/_hooks docs/screenshots.py
	$(BIN)/ruff format --check errands tests deploy docs/_hooks docs/screenshots.py
	$(BIN)/mypy
	$(BIN)/lint-imports

# The tests include the documentation: its strict build (tests/test_docs_site.py), every
# example of the README and docs/ (tests/test_docs_examples.py), and the wheel installed into
# a fresh virtual environment (tests/test_wheel.py).
# Three test processes on two cores: most tests wait on daemons, PostgreSQL and the
# network rather than compute. A file's tests stay together (--dist loadfile), so a
# module's daemon or browser is started once. Each process starts its own PostgreSQL.
test: lint
	$(BIN)/pytest -n 3 --dist loadfile

# The documentation site on http://127.0.0.1:8000, rebuilt as its pages change.
docs: $(DEV)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# errands bench and errands chaos use the embedded database while it runs, and only
# errands run starts it: these targets start it first when no database URL is set.
embedded-database: $(INSTALLED)
	$(if $(ERRANDS_DATABASE_URL)$(DATABASE_URL),,$(BIN)/python -c \
	    'import os; from errands import embedded; embedded.start(os.environ.get("ERRANDS_DATA_DIR"))')

bench: $(DEV) embedded-database
	$(BIN)/errands bench --json bench/last-run.json

bench-quick: $(DEV) embedded-database
	$(BIN)/errands bench --quick

chaos: $(DEV) embedded-database
	$(BIN)/errands chaos --profile chaos/ci.toml

compose-test: $(DEV)
	PYTHON=$(BIN)/python deploy/compose-test
