# `make demo` and `make test` work on a fresh machine: they create .venv, install the CPU build
# of torch first (a plain `torch` requirement would pull several GB of CUDA packages), then bnlab.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,ray]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/bnlab run configs/quickstart.yaml

# ruff holds the style and who may import what (banned-api); import-linter holds the layers.
lint: setup
	$(BIN)/ruff check bnlab tests bench
	$(BIN)/lint-imports

# Last, the wheel as a user installs it: built from a clean clone, installed in a throwaway venv.
test: setup lint
	$(BIN)/python -m pytest
	bash .ci/wheel-check

bench: setup
	$(BIN)/python bench/run_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
