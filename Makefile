# embopt: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help env data repro push pull test test-unit test-fast lint bench ui ui-check tracking-server tracking-server-stop triton-env serve-triton clean

help: ## List targets with a one-line description
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-20s %s\n", $$1, $$2}'

# uv installs the lock faster than pip (61 s vs 229 s on the 2-core Intel VM, pip with a warm
# cache, uv with none) and the same package set. --compile-bytecode (+88 s here) as pip does:
# where PYTHONDONTWRITEBYTECODE is set (this VM and CI), nothing compiled at import time is
# cached, and every stage process would compile torch, transformers and MLflow from source again.
# uv does not read pip's configuration, so pip's index and find-links (where a machine keeps the
# CPU torch wheel) are handed to it.
UV_VERSION := 0.13.9
UV_ARGS = $$(i=$$($(BIN)/pip config get global.index-url 2>/dev/null) && echo --default-index "$$i") \
          $$(l=$$($(BIN)/pip config get global.find-links 2>/dev/null) && echo --find-links "$$l") \
          $${PIP_FIND_LINKS:+--find-links "$$PIP_FIND_LINKS"}
UV = $(BIN)/uv pip install --quiet --compile-bytecode $(UV_ARGS)

$(STAMP): requirements/lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	# torch==2.13.0 (exact) takes the CPU wheel; the lock pins everything else.
	$(UV) --python $(BIN)/python -r requirements/lock.txt
	$(UV) --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

env: $(STAMP) ## Create .venv with the pinned, tested package set

# The raw data are frozen `dvc import-url` outputs (data/raw/*.dvc): from the DVC cache when it has
# them, else imported again from ../shared/data (same hashes, so the .dvc files do not change).
data: $(STAMP) ## Bring the raw data (STSb, Wikipedia corpus) into data/raw
	@for f in data/raw/*.dvc; do \
	  test -e "$${f%.dvc}" || $(BIN)/dvc checkout -q "$$f" 2>/dev/null || $(BIN)/dvc update -q "$$f"; \
	done

repro: data ## Run the whole pipeline (dvc repro) on the offline defaults
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

push: $(STAMP) ## Send every DVC output (data/raw imports included) to the default remote (../embopt-dvc-remote)
	$(BIN)/dvc push

pull: $(STAMP) ## In a fresh clone: fetch every DVC output from the remote; `make repro` is then a no-op
	$(BIN)/dvc pull

# Test workers: most of a test's time is single-threaded start-up (each stage is a fresh Python
# process importing torch/MLflow), so one worker per core nearly halves `make test` on 2 cores.
# loadfile keeps a file's tests on one worker: the e2e module shares one tiny `dvc repro`.
# Files go out in collection order (e2e first, the longest), not xdist's most-tests-first,
# which left the one-test experiments file to run alone at the end.
TEST_WORKERS ?= auto
test: $(STAMP) ## Run every test tier (unit, integration, e2e: the real dvc repro on a tiny profile)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

test-unit: $(STAMP) ## Unit tests only (tests/unit)
	$(BIN)/python -m pytest -q tests/unit

test-fast: $(STAMP) ## Everything but the slow tests and those starting services (PostgreSQL, S3, Triton)
	$(BIN)/python -m pytest -q -m "not slow and not services" tests

lint: $(STAMP) ## ruff
	$(BIN)/ruff check src stages tests scripts

bench: $(STAMP) ## Benchmark every variant against the anchors (prints a table)
	$(BIN)/embopt bench

ui: $(STAMP) ## Open the MLflow UI on the local store (http://127.0.0.1:5000)
	@echo "runs, model-training view: http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning (1: the first experiment of a fresh store)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

ui-check: $(STAMP) ## Tiny pipeline twice, then the MLflow UI in headless Chromium: runs, compare, model; PNGs in reports/ui
	$(BIN)/python scripts/ui_check.py

tracking-server: $(STAMP) ## Start the team MLflow server on 127.0.0.1:5000 (PostgreSQL store, proxied artifacts; idempotent)
	$(BIN)/python scripts/tracking_server.py start

tracking-server-stop: ## Stop the team MLflow server and its PostgreSQL
	$(PYTHON) scripts/tracking_server.py stop

TRITON_VENV := .venv-triton
$(TRITON_VENV)/.installed: requirements/triton.txt $(STAMP)
	$(PYTHON) -m venv $(TRITON_VENV)
	$(UV) --python $(TRITON_VENV)/bin/python -r requirements/triton.txt
	touch $@

triton-env: $(TRITON_VENV)/.installed ## Create .venv-triton for PyTriton (its own venv: it needs numpy<2)

serve-triton: $(STAMP) $(TRITON_VENV)/.installed ## Serve models:/embopt-encoder@champion through Triton (dynamic batching) on 127.0.0.1:8000/8001
	$(BIN)/python scripts/triton_serve.py --model-uri models:/embopt-encoder@champion

clean: ## Remove the virtual environment and caches (not models/ or mlflow.db)
	rm -rf $(VENV) $(TRITON_VENV) .pytest_cache .ruff_cache
