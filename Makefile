# `make run` and `make test` bootstrap .venv on a fresh machine and reuse it afterwards.
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTHON ?= python3

.PHONY: run test lint bench bench-quick chaos

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[embedded,dev]'
	touch $(INSTALLED)

run: $(INSTALLED)
	$(BIN)/errands run

lint: $(INSTALLED)
	$(BIN)/ruff check errands tests
	$(BIN)/ruff format --check errands tests
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

bench: $(INSTALLED)
	$(BIN)/errands bench --json bench/last-run.json

bench-quick: $(INSTALLED)
	$(BIN)/errands bench --quick

chaos: $(INSTALLED)
	$(BIN)/errands chaos --profile chaos/ci.toml
