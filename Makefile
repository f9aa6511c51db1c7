# Two commands matter: `make run` and `make test`. Both set up their own virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= src/factorflow/examples/factorflow.example.toml

.PHONY: run test lint typecheck unit bench bench-pipeline bench-scale clean services

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Run the service on the embedded default (SQLite, bundled example config, 127.0.0.1:8080).
run: $(STAMP)
	$(BIN)/factorflow serve --config $(CONFIG)

## The whole test suite: lint, type check, tests (PostgreSQL is started if it is not running,
## Debian's chromium is installed for the dashboard's browser tests if it is missing).
test: $(STAMP) services
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

services:
	@scripts/ensure-services
	@scripts/ensure-chromium

bench: $(STAMP)
	$(BIN)/python bench/receiver.py

## Pipeline events/s against a trivial DBOS workflow, SQLite and PostgreSQL (about six minutes).
bench-pipeline: $(STAMP) services
	$(BIN)/python bench/pipeline.py

## Scale-out: 2 receivers + 2 workers on PostgreSQL against one serve on SQLite (about four
## minutes; K and M with SCALE_ARGS="--receivers 3 --workers 2").
bench-scale: $(STAMP) services
	$(BIN)/python bench/scale.py $(SCALE_ARGS)

clean:
	rm -rf $(VENV) factorflow-data .mypy_cache .ruff_cache .pytest_cache
