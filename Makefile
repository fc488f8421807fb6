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

.PHONY: help install services sync-check test test-nbs test-py demo bench clean

help:
	@echo "make demo   set up, run the pipeline (dvc repro: ingest, etl, train, evaluate) on the full 2013 data, push it to the DVC remote,"
	@echo "            run the tutorials, print the datasets, row counts, the training's machine session and cost, the registry;"
	@echo "            then serve the production model, create a key, predict over V1 and V2, and print the audit of those calls and 'aiinfra status'"
	@echo "make test   set up, then: nbdev sync, markdown, dvc.lock, stages and template checks, notebook tests, pytest (store on SQLite and PostgreSQL)"
	@echo "make bench  the benchmarks in benchmarks/ (ratios measured side by side)"

$(BIN)/python:
	python3 -m venv $(VENV)

$(VENV)/.installed: pyproject.toml .ci/constraints-cpu.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -U pip 2>&1 | $(PIP_QUIET)
	$(BIN)/python -m pip install -q $(CONSTRAINTS) -e ".[dev]" 2>&1 | $(PIP_QUIET)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name python3 >/dev/null
	touch $@

install: $(VENV)/.installed

services:
	@bash .ci/services.sh
	@bash .ci/browser.sh
	@bash .ci/containers.sh

sync-check: install
	bash .ci/check_sync.sh
	python .ci/check_markdown.py nbs
	python .ci/check_lock.py
	aiinfra stages check
	python .ci/render_reference.py --check

test-nbs: install services
	AIINFRA_HOME=$$(mktemp -d) nbdev-test nbs/api
	AIINFRA_HOME=$$(mktemp -d) pytest -q --nbval-lax --nbval-current-env nbs/tutorials

test-py: install services
	pytest tests

test: sync-check test-nbs test-py

# where `make demo` pushes DVC-tracked data when the repo names no remote (teams point it at S3/SSH: README)
DVC_REMOTE ?= $(HOME)/.aiinfra/dvc-remote
PAPERMILL := papermill -k python3 --engine aiinfra --log-level WARNING --no-progress-bar

demo: install
	@dvc remote list | grep -q . || { echo "no DVC remote: adding a local one at $(DVC_REMOTE)"; dvc remote add --local -d local $(DVC_REMOTE); }
	dvc repro
	dvc push
	$(PAPERMILL) nbs/tutorials/quickstart.ipynb data/runs/quickstart.ipynb
	$(PAPERMILL) nbs/tutorials/analytics.ipynb data/runs/analytics.ipynb -p data_dir data
	aiinfra datasets
	aiinfra sql "select r.name as run, r.status, m.key as dataset_rows, m.value as n from runs r join metrics m on m.run_id = r.id where m.key like 'rows/%' order by r.started_at desc, m.key limit 12"
	aiinfra sql "select r.name as run, r.status, s.machine, s.kind, s.started_at, s.ended_at, s.cost from runs r join machine_sessions s on s.run_id = r.id order by r.started_at desc limit 3"
	aiinfra models list
	$(PAPERMILL) nbs/tutorials/serving.ipynb data/runs/serving.ipynb
	bash .ci/demo_serve.sh
	aiinfra status
	@echo "the control panel: 'aiinfra dashboard' (a page on 127.0.0.1, token printed), or '%load_ext aiinfra_nb' then '%aiinfra dashboard' in JupyterLab;"
	@echo "a demo company to look at: 'aiinfra demo fleet --projects 50 --dir /tmp/fleet' (nbs/tutorials/control_panel.ipynb walks through it)"

bench: install
	python benchmarks/store_ingest.py
	python benchmarks/etl.py
	python benchmarks/train.py
	python benchmarks/serve.py

clean:
	rm -rf $(VENV) _proc .pytest_cache
