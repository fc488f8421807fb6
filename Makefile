# Two commands on a fresh machine: `make demo` and `make test`. Each sets up what it needs first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
# CPU-only machines get the CPU build of torch (see .ci/constraints-cpu.txt); a machine with an
# NVIDIA driver keeps pip's default CUDA build.
CONSTRAINTS := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c .ci/constraints-cpu.txt)
# pip's noise about this machine's local mirrors is not news
PIP_QUIET := grep -v "^WARNING: Location 'file:" || true

.PHONY: help install services browser containers sync-check test test-fast test-nbs test-py tutorials demo lock bench clean

help:
	@echo "make demo       set up, run the pipeline (dvc repro: ingest, etl, train, evaluate) on the full 2013 data, push it to the DVC remote,"
	@echo "                run every tutorial through the papermill engine, print the datasets, row counts, the training's machine session"
	@echo "                and cost, the registry; then serve the production model, create a key, predict over V1 and V2, and print the"
	@echo "                audit of those calls and 'aiinfra status'"
	@echo "make test       set up, then: nbdev sync, ruff, markdown, dvc.lock, stages and template checks, the library notebooks' tests, pytest"
	@echo "                (store on SQLite and PostgreSQL, real servers, browser, images) and the tutorials under nbval, side by side"
	@echo "make test-fast  the inner loop: the checks, the library notebooks' tests and pytest without the browser, image, load and end-to-end tests"
	@echo "make bench      the benchmarks in benchmarks/ (ratios measured side by side)"

$(BIN)/python:
	python3 -m venv $(VENV)

# the toolkit, and this repository's reference project (reference/: the flights' own code, which no toolkit wheel holds)
$(VENV)/.installed: pyproject.toml reference/pyproject.toml .ci/constraints-cpu.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -U pip 2>&1 | $(PIP_QUIET)
	$(BIN)/python -m pip install -q $(CONSTRAINTS) -e ".[dev]" -e ./reference 2>&1 | $(PIP_QUIET)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name python3 >/dev/null
	touch $@

install: $(VENV)/.installed

services:  # the PostgreSQL server of the store tests
	@bash .ci/services.sh
browser:  # Chromium for the browser tests
	@bash .ci/browser.sh
containers:  # buildah, skopeo, docker-registry, debootstrap for the image tests and tutorial
	@bash .ci/containers.sh

sync-check: install
	bash .ci/check_sync.sh
	ruff check aiinfra_nb tests benchmarks .ci
	python .ci/check_markdown.py nbs
	python .ci/check_lock.py
	aiinfra stages check
	python .ci/render_reference.py --check

# Independent tests run side by side (pytest-xdist): most of them wait on other processes (servers, kernels, dvc, buildah,
# Chromium), so more processes than cores; tests/conftest.py keeps a notebook's cells, and the image tests, in one process.
TEST_WORKERS ?= 3
PYTEST := pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

test-nbs: install
	AIINFRA_HOME=$$(mktemp -d) nbdev-test nbs/api

test-py: install services browser containers
	$(PYTEST) --nbval-lax --nbval-current-env tests nbs/tutorials

test: sync-check test-nbs test-py

test-fast: sync-check test-nbs services
	$(PYTEST) -m "not (browser or images or load or e2e or scheduler)" tests

# where `make demo` pushes DVC-tracked data when the repo names no remote (teams point it at S3/SSH: README)
DVC_REMOTE ?= $(HOME)/.aiinfra/dvc-remote
PAPERMILL := papermill -k python3 --engine aiinfra --log-level WARNING --no-progress-bar

# Every tutorial through the papermill engine, as runs in the store (make test runs them under nbval too); the images
# tutorial needs buildah (make test installs it when root), serving is the demo's last
TUTORIALS := quickstart analytics new_project labelling control_panel schedules monitoring images

tutorials: install
	@for t in $(TUTORIALS); do \
	  if [ $$t = images ] && ! command -v buildah >/dev/null; then echo "tutorial images: skipped, no buildah ('make containers' installs it when root)"; continue; fi; \
	  echo "tutorial $$t"; $(PAPERMILL) nbs/tutorials/$$t.ipynb data/runs/$$t.ipynb; done

demo: install
	@dvc remote list | grep -q . || { echo "no DVC remote: adding a local one at $(DVC_REMOTE)"; dvc remote add --local -d local $(DVC_REMOTE); }
	dvc repro
	@# a model's stage lives in the store: on a new one DVC may find evaluate up to date (the same model again) and promote nothing
	dvc repro --force --single-item evaluate
	dvc push
	$(MAKE) --no-print-directory tutorials
	aiinfra datasets
	aiinfra sql "select r.name as run, r.status, m.key as dataset_rows, m.value as n from runs r join metrics m on m.run_id = r.id where m.key like 'rows/%' order by r.started_at desc, m.key limit 12"
	aiinfra sql "select r.name as run, r.status, s.machine, s.kind, s.started_at, s.ended_at, s.cost from runs r join machine_sessions s on s.run_id = r.id order by r.started_at desc limit 3"
	aiinfra models list
	$(PAPERMILL) nbs/tutorials/serving.ipynb data/runs/serving.ipynb
	bash .ci/demo_serve.sh
	aiinfra status
	@echo "the control panel: 'aiinfra dashboard' (a page on 127.0.0.1, token printed), or '%load_ext aiinfra_nb' then '%aiinfra dashboard' in JupyterLab;"
	@echo "a demo company to look at: 'aiinfra demo fleet --projects 50 --dir /tmp/fleet' (nbs/tutorials/control_panel.ipynb walks through it)"

# dvc.lock as a fresh clone's `dvc repro` writes it: the registry keeps every version (data/models persists), so a lock
# written over older versions names them too and a clean clone would not reproduce it
lock: install
	rm -rf data/models data/validation data/checkpoints
	AIINFRA_HOME=$$(mktemp -d) dvc repro

bench: install
	python benchmarks/store_ingest.py
	python benchmarks/etl.py
	python benchmarks/train.py
	python benchmarks/serve.py

clean:
	rm -rf $(VENV) _proc .pytest_cache
