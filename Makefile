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
run: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
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

clean:
	rm -rf outputs .pytest_cache .ruff_cache
