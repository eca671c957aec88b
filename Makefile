# ank-zenoh: every target sets up what it needs by itself on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export CONTAINERS_CONF := $(CURDIR)/containers.conf
PYTEST_ARGS ?=

.PHONY: all venv system-deps lint typecheck test test-quick test-faults demo bench schemas images clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the runtimes and tests use; installed only where missing and
# only where apt-get can run (root). Never fails the build: the tests that need
# a missing package skip with the reason.
system-deps:
	@bash scripts/system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check services schemas tests bin manifests bench examples
	$(BIN)/ruff format --check services schemas tests bin manifests bench examples || true

typecheck: $(STAMP)
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/python -m schemas.export

test: $(STAMP) system-deps
	$(BIN)/ruff check services schemas tests bin manifests bench examples
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-faults: $(STAMP) system-deps
	ANK_FAULTS=1 $(BIN)/python -m pytest -q -m faults $(PYTEST_ARGS)

images: system-deps
	@bash scripts/build-test-images.sh

demo: $(STAMP) system-deps
	$(BIN)/ank up manifests/police.yaml

bench: $(STAMP) system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .ank .mypy_cache .ruff_cache .pytest_cache
