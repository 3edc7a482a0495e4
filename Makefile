# The two commands the README promises: `make demo` and `make test`.
# Each bootstraps its own virtualenv in .venv from nothing but python3 (3.11+).
# `make test` is what CI runs (.ci/run): lint, then the type check, then the tests; the first
# that fails stops it. `make pytest` runs the tests alone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: demo test pytest lint typecheck check install clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/audience-lake demo

test: lint typecheck pytest

# Two pytest-xdist workers by default (CI has 2 cores; many tests wait on servers and child
# processes, so a second worker overlaps their waits). A module runs whole on one worker
# (--dist loadfile), so module fixtures start once; modules start in collection order, slowest
# first (tests/conftest.py), not by number of tests. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

pytest: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check flows tasks infra tests benchmarks
	$(BIN)/ruff format --check flows tasks infra tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

check: test

clean:
	rm -rf $(VENV) .lake .demo .prefect .pytest_cache .mypy_cache .ruff_cache
