# polar-credits: `make run` starts everything locally, `make demo` simulates a purchase.
# Needs only Python 3.11+, pip and make; the virtualenv is built on first use.

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed

.PHONY: help install run demo test lint docs bench chaos lock

help: ## Show these targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

# Rebuilt only when pyproject.toml changes.
$(VENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[dev]'
	touch $@

install: $(VENV_STAMP) ## Create .venv and install the project with dev extras

run: $(VENV_STAMP) ## Start Temporal, the Polar stand-in, the worker and the API
	$(VENV_PYTHON) -m tools.stack

demo: $(VENV_STAMP) ## Simulate a purchase against the running stack (after make run)
	$(VENV_PYTHON) -m tools.demo

test: $(VENV_STAMP) ## Run the test suite
	$(VENV)/bin/pytest

lint: $(VENV_STAMP) ## Check the code: ruff, and mypy (strict) over the service
	$(VENV)/bin/ruff check .
	$(VENV_PYTHON) -m tools.typecheck

# Strict: a broken link or anchor, a page missing from mkdocs.yml's nav, or a missing page
# fails the build (mkdocs.yml, validation). tests/test_docs_site.py runs the same build.
docs: $(VENV_STAMP) ## Build the documentation site (docs/) into site/
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: $(VENV_STAMP) ## Benchmark the pipeline and a renewal burst on private stacks (long; ARGS=--quick for a smoke run)
	$(VENV_PYTHON) -m tools.bench.pipeline $(ARGS)
	$(VENV_PYTHON) -m tools.bench.burst $(ARGS)

chaos: $(VENV_STAMP) ## Chaos run: N orders through faults, kills and restarts; asserts each is granted once (ARGS=--orders N)
	$(VENV_PYTHON) -m tools.bench.chaos $(ARGS)

# uv runs from a throwaway venv: it is no dependency of the project. setuptools (the build
# backend, pyproject.toml [build-system]) is locked too: the image builds the project offline.
UV_VERSION := 0.13.10

lock: ## Regenerate requirements.lock (the image's dependencies, pinned with hashes)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/pip" install --quiet 'uv==$(UV_VERSION)' && \
	printf 'setuptools>=68\n' | "$$tmp/venv/bin/uv" pip compile pyproject.toml - \
		--universal --python-version 3.11 --generate-hashes \
		--custom-compile-command 'make lock' --quiet -o requirements.lock
	@echo "requirements.lock written: commit it with pyproject.toml"
