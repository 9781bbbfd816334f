# The two quick-start commands (README): `make demo` and `make test`.
# Each creates or reuses a virtualenv in .venv and installs what it needs:
# the demo only meshq and its runtime dependencies, the tests the toolchain too.

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
RUNTIME = $(VENV)/.installed-runtime
TOOLCHAIN = $(VENV)/.installed-test

.PHONY: demo test lint bench clean

$(RUNTIME): setup.py setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME)

$(TOOLCHAIN): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(TOOLCHAIN)

demo: $(RUNTIME)
	$(BIN)/meshq demo

lint: $(TOOLCHAIN)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

bench: $(RUNTIME)
	$(BIN)/python bench/pubsub.py
	$(BIN)/python bench/reqrep.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/security.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
