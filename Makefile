# The two commands at the top of README.md: `make demo` and `make test`. Each does
# all of its own set-up on a fresh machine: the system packages it needs (with
# apt-get, when run as root on Debian/Ubuntu) and a project virtualenv in .venv.
VENV ?= .venv
BOOTSTRAP_PYTHON ?= python3
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
# pytest workers; idle workers take queued tests from busy ones (worksteal)
PYTEST_WORKERS ?= 2

# graphviz: `dot` draws DAGs (a text fallback exists); chromium: the browser tests;
# nodejs (20 or newer): builds the JupyterLab extension (extension/) the browser tests use.
DEMO_SYSTEM_PACKAGES = graphviz
TEST_SYSTEM_PACKAGES = graphviz chromium nodejs
VENV_BIN = $(abspath $(VENV))/bin
EXTENSION_SOURCES := extension/package.json extension/yarn.lock extension/tsconfig.json \
	extension/install.json $(wildcard extension/src/*.ts extension/style/*)
# pip's build hook (hatch-jupyter-builder) would build the extension again: the
# Makefile builds it itself (make test), or goes without it (make demo needs no node).
NO_NPM := HATCH_JUPYTER_BUILDER_SKIP_NPM=1

.PHONY: install install-test demo test lint format bench system-packages-demo system-packages-test

define apt_install
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "apt-get install$$missing"; \
	    apt-get update -q >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	  fi; \
	fi
endef

$(PYTHON):
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip

$(VENV)/.installed: pyproject.toml | $(PYTHON)
	$(NO_NPM) $(PIP) install -q -e .
	touch $@

# The extension is built into flowbook/labextension first; the editable install then
# copies it to .venv/share/jupyter/labextensions/flowbook, where JupyterLab finds it.
$(VENV)/.installed-test: pyproject.toml $(EXTENSION_SOURCES) | $(PYTHON)
	@node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null || \
	  { echo "make test: install Node.js 20 or newer (node), which builds the JupyterLab extension"; exit 1; }
	$(PIP) install -q jupyterlab
	@echo "building the JupyterLab extension (extension/ -> flowbook/labextension)"
	@cd extension && for step in "install --immutable" "build:prod"; do \
	  PATH="$(VENV_BIN):$$PATH" jlpm $$step > "$(VENV_BIN)/../extension-build.log" 2>&1 || \
	    { tail -n 40 "$(VENV_BIN)/../extension-build.log"; echo "jlpm $$step failed"; exit 1; }; \
	done
	$(NO_NPM) $(PIP) install -q -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

system-packages-demo:
	$(call apt_install,$(DEMO_SYSTEM_PACKAGES))

system-packages-test:
	$(call apt_install,$(TEST_SYSTEM_PACKAGES))

# Runs an example flow and an example notebook end to end on the default local
# datastore (./.flowbook); prints their DAGs and results.
demo: system-packages-demo install
	$(PYTHON) -m flowbook.examples.demo notebooks/counter_branches.ipynb

lint: install-test
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

format: install-test
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

# The whole test suite (pytest's exit code 5, "no tests ran", fails too).
test: system-packages-test install-test lint
	$(PYTHON) -m pytest tests -n $(PYTEST_WORKERS) --dist worksteal

bench: install
	$(PYTHON) benchmarks/run.py
