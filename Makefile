# MLEDGE: two commands on a fresh machine, `make demo` and `make test` (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
# An interpreter every user can run: the stack runs its components as their own Unix users when started as root
# (a Python under /root, e.g. pyenv's, is out of their reach), so the system's python3.11 comes first.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3.11 /usr/local/bin/python3.11) python3.11)
VENVS := .venvs
WL := $(VENVS)/workload
AF := $(VENVS)/orchestrator
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: browser setup demo demo-attack down status clean-venvs bench bench-robust bench-speed bench-drift bench-costs bench-chaos bench-rounds bench-scale focus-validator test test-unit test-dags test-e2e lint lock clean

setup: $(WL)/.installed $(AF)/.installed ## build both environments from the lock files

# The workload environment: Flower, torch, MLflow, Evidently, cloud SDKs, and this project (the `mledge` program).
$(WL)/.installed: requirements-workload.txt pyproject.toml
	@echo ">> building the workload environment in $(WL) (first time: a few minutes)"
	$(PYTHON) -m venv $(WL)
	$(WL)/bin/pip install $(PIP_FLAGS) -r requirements-workload.txt
	$(WL)/bin/pip install $(PIP_FLAGS) --no-deps -e .
	touch $@

# The orchestrator environment: Airflow 3.3 (it cannot share an environment with Flower 1.41).
$(AF)/.installed: requirements-orchestrator.txt pyproject.toml
	@echo ">> building the orchestrator environment in $(AF) (first time: a few minutes)"
	$(PYTHON) -m venv $(AF)
	$(AF)/bin/pip install $(PIP_FLAGS) -r requirements-orchestrator.txt
	$(AF)/bin/pip install $(PIP_FLAGS) --no-deps -e .
	touch $@

PRIVACY ?= none
demo: setup ## set up, start the local stack, run federated_training through Airflow, print a summary (PRIVACY=none|dp|secagg|secagg-dp)
	$(WL)/bin/mledge demo --privacy $(PRIVACY)

down: ## stop every process the local stack started
	@if [ -x $(WL)/bin/mledge ]; then $(WL)/bin/mledge stack down; else echo "nothing to stop"; fi

status: ## sites, SuperNodes, Flower runs and registered models as JSON
	$(WL)/bin/mledge status --json

test: setup lint test-unit test-dags test-e2e ## everything CI runs

test-unit: setup focus-validator
	$(WL)/bin/python -m pytest -q tests/workload

focus-validator: ## the FinOps Foundation's focus-validator in its own environment (Python >= 3.12), for the cost tests
	.ci/focus-validator-env

test-dags: setup
	$(AF)/bin/python -m pytest -q tests/orchestrator

# The chaos module too (issue 19: it must pass in CI); its outcome and recovery times go to .test-state/chaos.json.
test-e2e: setup browser
	MLEDGE_CHAOS_RESULTS=$(CURDIR)/.test-state/chaos.json $(WL)/bin/python -m pytest -q -m e2e tests/e2e

browser: ## Debian's chromium and chromium-driver for the UI test in headless Chromium (idempotent)
	.ci/install-browser

lint: setup
	$(WL)/bin/ruff check .
	$(WL)/bin/lint-imports
	.ci/lint-docker

lock: ## regenerate both lock files from the environments as they are
	( echo '# Lock file of the workload environment (Flower, torch, MLflow, Evidently, cloud SDKs). Regenerate with `make lock`.'; \
	  $(WL)/bin/pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' ) > requirements-workload.txt
	( echo '# Lock file of the orchestrator environment (Airflow 3.3). Regenerate with `make lock`.'; \
	  $(AF)/bin/pip freeze --exclude-editable ) > requirements-orchestrator.txt

clean: down ## remove local state (data, databases, logs) but keep the environments
	rm -rf .state .test-state

clean-venvs: ## remove both environments (the next `make` builds them again)
	rm -rf $(VENVS)

demo-attack: setup ## plant_c poisons its updates: FedAvg and the robust default (mledge-robust) side by side
	$(WL)/bin/mledge demo --attack

bench: bench-robust bench-drift bench-costs ## every benchmark; results as JSON (and markdown) under bench/results/

bench-robust: setup ## robustness grid (strategies x attacks x fractions) and aggregation speed: both JSON files
	$(WL)/bin/python -m bench.robust
	$(WL)/bin/python -m bench.aggregation_speed

bench-speed: setup ## one aggregate_train per strategy against a NumPy weighted mean, n x d grid
	$(WL)/bin/python -m bench.aggregation_speed

bench-drift: setup ## detection delay and false alarms per drift scenario, evaluation time against bare Evidently
	$(WL)/bin/python -m bench.drift

bench-model: setup ## failure-class F1, recall, precision of each model family: federated vs central vs each site alone, 3 new seeds (bench/results/model.md)
	$(WL)/bin/python -m bench.model

bench-costs: setup ## 1,000,000 FOCUS 1.2 rows (Parquet) into SQLite and PostgreSQL, re-ingested (unchanged, re-issued), against a naive ORM insert
	$(WL)/bin/python -m bench.costs

bench-privacy: setup ## accuracy, seconds per round and bytes per site of each privacy mode against none (digits, 20 clients; the axis_failures sites), one site lost mid-round under secagg
	$(WL)/bin/python -m bench.privacy

bench-rounds: setup ## seconds per round, 3 sites: warm trainers against training in the ClientApp process, side by side; a 3-round federated_training DAG run on the local stack (started and stopped if none runs)
	$(WL)/bin/python -m bench.rounds

bench-scale: setup ## 10, 100 and 1,000 simulated sites per round (FedAvg, robust default) and 30 real SuperNodes with their trainers: seconds per round, memory
	$(WL)/bin/python -m bench.scale

bench-chaos: setup ## faults injected into the running stack (tests/e2e/test_resilience_e2e.py): outcome and recovery time per fault
	MLEDGE_CHAOS_RESULTS=$(CURDIR)/bench/results/chaos.json $(WL)/bin/python -m pytest -q -m chaos tests/e2e/test_resilience_e2e.py
