# The two README commands are `make run` and `make test`; both install into .venv first.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test test-fast lint serve benchmarks clean

$(STAMP): pyproject.toml scripts/install.sh $(wildcard scripts/install.d/*.sh)
	bash scripts/install.sh

install: $(STAMP)

## The whole pipeline on embedded defaults: preprocess -> train -> evaluate -> register, then serve.
## The train stage prints one line per epoch (loss, accuracy, time, ETA); MLflow's artifact
## download bars would only interleave with them.
SERVE_URL = http://$${MNIST_SERVE_HOST:-127.0.0.1}:$${MNIST_SERVE_PORT:-8000}
MLFLOW_UI = $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --port 5000

run: install
	PATH="$(abspath $(BIN)):$$PATH" MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false $(BIN)/dvc repro
	@echo ""
	@echo "==> pipeline done: metrics in reports/ ($(BIN)/dvc metrics show), promotion decision in reports/promotion.json"
	@echo "==> MLflow UI (runs, registry):  $(MLFLOW_UI)   then open http://127.0.0.1:5000"
	@echo "==> serving the champion on $(SERVE_URL)  (drawing UI at /, API docs at /docs; Ctrl-C stops)"
	$(BIN)/python -m mnist_mlops.serve

## Lint, then the full test suite (slow end-to-end tests included, as CI runs it).
test: install
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_ARGS)

## The quick inner loop: everything but the slow end-to-end tests.
test-fast: install
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

serve: install
	$(BIN)/python -m mnist_mlops.serve

## Remove run outputs and caches. Never var/: the prediction log and users' feedback are
## production data, not build output (delete var/predictions by hand to start afresh).
clean:
	rm -rf outputs .pytest_cache .ruff_cache
