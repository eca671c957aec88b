# ank-zenoh: every target sets up what it needs by itself on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export CONTAINERS_CONF := $(CURDIR)/containers.conf
PYTEST_ARGS ?=

.PHONY: all lock venv system-deps lint typecheck test test-quick test-faults test-ankaios demo bench schemas images clean

all: test

# One lock per supported Python (requirements/py3XX.lock, hashed): a fresh clone
# installs exactly these versions, whatever the registry serves today.
PYVER := $(shell $(PY) -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
LOCK := requirements/py$(PYVER).lock
UV_VERSION := 0.13.9

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	# compat mode: a plain path in a .pth, not setuptools' import-hook finder,
	# which cost every python process of the project ~35 ms at start (`ank`, each service)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	$(BIN)/pip check
	touch $(STAMP)

$(LOCK):
	@echo "no lock for Python $(PYVER) (supported: $$(ls requirements/*.lock | tr '\n' ' ')); use PY=python3.X or run make lock" >&2; exit 1

# Refreshes every lock from pyproject.toml's ranges (the newest versions the
# registry serves that satisfy them), with hashes.
lock:
	test -x .lockenv/bin/uv || ($(PY) -m venv .lockenv && .lockenv/bin/pip install -q uv==$(UV_VERSION))
	for v in 3.11 3.12 3.13; do \
	  .lockenv/bin/uv pip compile pyproject.toml requirements/build.in --extra dev --generate-hashes --universal \
	    --python-version $$v --no-header -q -o requirements/py$${v/./}.lock || exit 1; \
	done

venv: $(STAMP)

# Debian packages the runtimes and tests use; installed only where missing and
# only where apt-get can run (root). Never fails the build: the tests that need
# a missing package skip with the reason.
system-deps:
	@bash scripts/system-deps.sh

LINTED := services ank_common schemas tests bin manifests bench examples

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: $(STAMP)
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/python -m schemas.export

test: $(STAMP) system-deps lint typecheck
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-faults: $(STAMP) system-deps
	ANK_FAULTS=1 $(BIN)/python -m pytest -q -m faults $(PYTEST_ARGS)

# Ankaios's own system tests against this checkout (scripts/test-ankaios.sh);
# not part of `make test` (it takes long: see README, Compatibility).
test-ankaios: $(STAMP) system-deps
	bash scripts/test-ankaios.sh $(ROBOT_ARGS)

images: system-deps
	@bash scripts/build-test-images.sh

demo: $(STAMP) system-deps
	$(BIN)/ank up manifests/police.yaml

bench: $(STAMP) system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .lockenv .ank .mypy_cache .ruff_cache .pytest_cache
