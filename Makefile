# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint lock bench clean

venv: $(STAMP)

# The lock pins every transitive dependency; the package itself is installed editable on top.
# --compile-bytecode: uv leaves no .pyc by default (pip writes them), and where
# PYTHONDONTWRITEBYTECODE is set (this CI machine) Python never caches them either, so every
# process compiled Dagster, GX and pandas from source again: seconds on each run's start.
$(STAMP): requirements.lock pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==0.13.*"
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

demo: venv
	$(BIN)/runhub demo

# Two workers (pytest-xdist) on the two cores of the CI machine; worksteal hands a test to whichever
# worker is free, so the minutes-long kill -9 tests of one file do not queue behind each other.
PYTEST_ARGS ?= -n 2 --dist worksteal

test: venv lint
	$(BIN)/pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

lock:
	$(BIN)/uv pip compile --quiet --python-version 3.11 pyproject.toml --extra dev -o requirements.lock

bench: venv
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .runhub .pytest_cache .mypy_cache .ruff_cache
