# Two commands set everything up on a fresh machine: `make demo` and `make test` (each creates .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export RAY_USAGE_STATS_ENABLED := 0
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90

.PHONY: demo test test-fast test-cluster bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/logdiff run demo

# one worker per core (at most 4), a whole test file per worker, so module fixtures are built once
PARALLEL := -n auto --maxprocesses=4 --dist loadfile

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PARALLEL)

# the pipeline on a two-node Ray cluster on this machine, with S3 (moto) and MLflow servers (docs/cluster.md)
test-cluster: $(VENV)/.installed-cluster
	$(BIN)/python -m pytest -q -m cluster tests/test_cluster.py

$(VENV)/.installed-cluster: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,cluster,test-cluster]"
	touch $@

test-fast: $(STAMP)  # everything but the end-to-end runs of the orchestrated pipeline (about a minute)
	$(BIN)/python -m pytest -q $(PARALLEL) -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/gpu_check.py

clean:
	rm -rf artifacts mlflow.db mlartifacts
