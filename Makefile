# `make run` and `make test` bootstrap .venv on a fresh machine and reuse it afterwards.
# `make run` installs what running needs (errands and the embedded database); `make test`,
# `make bench` and `make chaos` add the test, lint and harness tools. `make compose-test` runs
# the compose deployment for real, in containers (deploy/compose-test: root, Docker, Debian).
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEV := $(VENV)/.installed-dev
PYTHON ?= python3
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: run test lint bench bench-quick chaos compose-test embedded-database

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
	$(BIN)/ruff check errands tests deploy
	$(BIN)/ruff format --check errands tests deploy
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

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
