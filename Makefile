# RigPose: the two commands are `make demo` and `make test`; each runs `setup` itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.rigpose-setup-stamp
TORCH_VERSION := 2.13.0

.PHONY: browser setup demo test unit integration bench lint clean help up down status demo-cluster

help:
	@echo "make demo   - set up, then run the end-to-end demo on embedded defaults"
	@echo "make test   - set up, then run unit and integration tests"
	@echo "make bench  - set up, then run the benchmarks in bench/"
	@echo "make lint   - ruff check"
	@echo "make browser - the headless Chromium the viz page test uses (apt-get, where root on Debian; make test runs it)"
	@echo "make up     - start the local stack on 127.0.0.1: Ray head + 2nd node, MLflow, S3; idempotent"
	@echo "              (MLflow's store DB=sqlite, or DB=postgres: a local PostgreSQL on a Unix socket, apt postgresql)"
	@echo "make status - health of each part of the local stack"
	@echo "make down   - stop exactly what make up started"
	@echo "make demo-cluster - make up, then the demo as a Ray job on it (S3 data, MLflow server, 2 nodes)"
	@echo "make setup  - create .venv, install torch==$(TORCH_VERSION) first, then rigpose[test,mocap,detect] editable + detect weights"

# Re-run the install only when the project's dependencies change (idempotent and quick otherwise).
# Quiet: one line for the whole set-up (pip -qq still prints errors; `make setup PIP_QUIET=` shows everything).
PIP_QUIET ?= -qq
WEIGHTS := $(VENV)/weights
MP_WEIGHTS_VERSION := 0.10.21
# where rigpose detect (and its tests) find those weights, unless the caller set another place
export RIGPOSE_WEIGHTS ?= $(abspath $(WEIGHTS))
$(STAMP): pyproject.toml
	@echo "setup: $(VENV) (torch==$(TORCH_VERSION) first, then rigpose[test,mocap,detect] editable, detect weights)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PIP) install $(PIP_QUIET) --upgrade pip
	@# torch first: with no torch installed, a range admitting a newer release pulls a multi-GB CUDA build.
	@$(PIP) install $(PIP_QUIET) "torch==$(TORCH_VERSION)"
	@$(PIP) install $(PIP_QUIET) -e ".[test,mocap,detect]"
	@# rigpose detect's pose models, as packaged in this wheel on PyPI (read from it, never installed; see
	@# rigpose.detect.mediapipe): fetched here at set-up, so nothing is downloaded at run time
	@$(PIP) download $(PIP_QUIET) "mediapipe==$(MP_WEIGHTS_VERSION)" --no-deps --only-binary=:all: \
		--python-version 3.11 --platform manylinux_2_28_x86_64 -d $(WEIGHTS)
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	@$(VENV)/bin/rigpose demo

test: setup browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests

# The headless browser that the `rigpose viz` page test renders in (Debian's chromium-headless-shell, from the Debian
# registry): installed where this is a Debian machine we may install on (root, apt-get); elsewhere that test is
# skipped, saying what to install.
CHROMIUM := chromium-headless-shell
browser:
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "setup: $(CHROMIUM) (apt-get, for the viz page test)"; \
	    apt-get install -y -qq --no-install-recommends $(CHROMIUM) >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends $(CHROMIUM) >/dev/null 2>&1; } || \
	    echo "setup: could not install $(CHROMIUM): the viz browser test will be skipped"; \
	  else echo "setup: no $(CHROMIUM) (apt-get install $(CHROMIUM)): the viz browser test will be skipped"; fi; }

unit: setup
	$(PY) -m pytest -q tests/unit

integration: setup
	$(PY) -m pytest -q tests/integration

bench: setup
	for f in bench/*_bench.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lint: setup
	$(VENV)/bin/ruff check .

# The local stack (infra/local/stack.py; its state, token and keys in infra/local/.state/, git-ignored).
STACK := $(PY) infra/local/stack.py
DB ?= sqlite

up: setup
	@$(STACK) up --db $(DB)

status:
	@$(STACK) status

down:
	@$(STACK) down

demo-cluster: up
	@source infra/local/.state/env && $(PY) infra/local/demo_cluster.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info platform/*.egg-info
