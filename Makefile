# embopt: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help env repro test test-fast lint bench ui clean

help: ## List targets with a one-line description
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): requirements/lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 (exact) takes the CPU wheel; the lock pins everything else.
	$(BIN)/pip install --quiet -r requirements/lock.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

env: $(STAMP) ## Create .venv with the pinned, tested package set

repro: $(STAMP) ## Run the whole pipeline (dvc repro) on the offline defaults
	@test -d .dvc || $(BIN)/dvc init --quiet
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: $(STAMP) ## Run the test suite (unit tests + the end-to-end dvc repro on a tiny profile)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP) ## Unit tests only (skips the end-to-end pipeline tests)
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP) ## ruff
	$(BIN)/ruff check src stages tests

bench: $(STAMP) ## Benchmark every variant against the anchors (prints a table)
	$(BIN)/embopt bench

ui: $(STAMP) ## Open the MLflow UI on the local store (http://127.0.0.1:5000)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean: ## Remove the virtual environment and caches (not models/ or mlflow.db)
	rm -rf $(VENV) .pytest_cache .ruff_cache
