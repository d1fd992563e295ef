# The two commands at the top of README.md: `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install install-test demo test lint format bench

install:
	$(PIP) install -q -e .

install-test:
	$(PIP) install -q -e '.[test]'

# Runs an example flow and an example notebook end to end on the default local
# datastore (./.flowbook); prints their DAGs and results.
demo: install
	$(PYTHON) -m flowbook.examples.demo notebooks/counter_branches.ipynb

lint:
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m ruff check .

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

# The whole test suite (pytest's exit code 5, "no tests ran", fails too).
test: install-test lint
	$(PYTHON) -m pytest tests

bench: install
	$(PYTHON) benchmarks/run.py
