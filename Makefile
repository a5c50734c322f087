# One command to run the console, one to run every test. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 5000
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint typecheck pytest bench bench-quick services browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,dev,bench]'
	touch $@

## make run: install, migrate the SQLite default, seed example tasks on the first run, start the
## console + in-process consumer. Mail links use this PORT; mail is kept in the dev outbox
## (instance/dev-mail, shown at /notifications/dev-mail) unless MAIL_SERVER is set; the example
## task types are loaded next to any ASYNC_TASK_PROCESSORS of yours.
comma := ,
RUN_PROCESSORS := $(if $(filter webapp.examples,$(subst $(comma), ,$(ASYNC_TASK_PROCESSORS))),$(ASYNC_TASK_PROCESSORS),webapp.examples$(if $(ASYNC_TASK_PROCESSORS),$(comma)$(ASYNC_TASK_PROCESSORS)))
RUN_ENV := ASYNC_TASK_PROCESSORS=$(RUN_PROCESSORS) \
	ASYNC_TASK_BASE_URL=$${ASYNC_TASK_BASE_URL:-http://127.0.0.1:$(PORT)} \
	ASYNC_TASK_DEV_MAIL_DIR=$${ASYNC_TASK_DEV_MAIL_DIR-$(if $(MAIL_SERVER),,$(CURDIR)/instance/dev-mail)}
## One process migrates (only when behind), creates the first login and the examples (only on a
## first run) and serves: webapp/devserver.py.
run: $(STAMP)
	@echo "Commands: $(BIN)/flask --app webapp users|tokens|tasks|schedules --help  (no venv to activate)"
	$(RUN_ENV) ASYNC_TASK_POLL_INTERVAL=$${ASYNC_TASK_POLL_INTERVAL:-1} \
	  $(BIN)/python -m webapp.devserver --host 127.0.0.1 --port $(PORT)

## make test: services up, lint, types, every test
test: $(TEST_STAMP) services browser
	$(BIN)/ruff check .
	$(BIN)/mypy webapp
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true

typecheck: $(TEST_STAMP)
	$(BIN)/mypy webapp

services:
	@bash .ci/services.sh

## Debian packages the tests drive: Chromium (browser tests), libfaketime (clock-skew fault test), nginx (slow clients)
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }
	@command -v faketime >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null; } || echo "faketime not installed: the clock-skew fault test will be marked xfail"

bench: $(TEST_STAMP) services
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || echo "wrk not installed: using the slower Python HTTP client"
	$(BIN)/python -m bench.run

bench-quick: $(TEST_STAMP) services
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache
