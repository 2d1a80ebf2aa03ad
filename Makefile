PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOME_DIR ?= data/demo
MONTH ?= 2026-10

.PHONY: demo test install lint format bench bench-stages bench-workers bench-history dev clean

$(BIN)/usagebox: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(BIN)/usagebox

install: $(BIN)/usagebox

demo: install
	rm -rf $(HOME_DIR)
	$(BIN)/usagebox demo --home $(HOME_DIR) --month $(MONTH)

test: install
	$(BIN)/ruff check usagebox_pipelines usagebox_demo tests bench
	$(BIN)/ruff format --check usagebox_pipelines usagebox_demo tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -n auto --dist loadfile  # one worker per CPU; a file's tests share a worker (module fixtures)

test-fast: install  ## the inner loop: everything but the slow tests (Dagster runs, subprocesses, demo, wheel)
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check --fix usagebox_pipelines usagebox_demo tests bench
	$(BIN)/ruff format usagebox_pipelines usagebox_demo tests bench

# The user's path: a generated month through every CLI command, with Dagster step times and the
# hand-written reference (see bench/README.md), with a JSONL ingest too so every target of issue 13
# that one month measures is in the table. BENCH_ARGS adds options, e.g. --skip-close.
BENCH_EVENTS ?= 1000000
BENCH_ACCOUNTS ?= 2000
bench: install
	$(BIN)/python bench/month.py --events $(BENCH_EVENTS) --accounts $(BENCH_ACCOUNTS) --jsonl $(BENCH_ARGS)

# Function-level stage benchmarks (ingest_files, rollups) with --profile breakdowns.
bench-stages: install
	$(BIN)/python bench/ingest.py --events 1000000
	$(BIN)/python bench/rollups.py --events 1000000

# Partition fan-out: the month's usage_hourly days by 1, 2 and 4 parallel hourly_job runs, on local
# disk and on a local moto S3 server (wall time, speed-up, commit latency per table). Run it quiet.
bench-workers: install
	$(BIN)/python bench/workers.py --events $(BENCH_EVENTS) --accounts $(BENCH_ACCOUNTS) $(BENCH_ARGS)

# A year of monthly closes: month 12's close against month 1's (issue 13: within 1.2x).
bench-history: install
	$(BIN)/python bench/history.py $(BENCH_ARGS)

# The UI on the demo home (built first when missing): the resource reads USAGEBOX_HOME, the
# instance is the one `usagebox run/ingest/close` record into.
$(HOME_DIR)/dagster/dagster.yaml:
	$(MAKE) demo

# `dg dev` ([tool.dg] in pyproject.toml) when dagster-dg-cli is installed, else `dagster dev`.
DG ?= $(firstword $(wildcard $(BIN)/dg) $(shell command -v dg 2>/dev/null))
dev: install $(HOME_DIR)/dagster/dagster.yaml
	USAGEBOX_HOME=$(abspath $(HOME_DIR)) DAGSTER_HOME=$(abspath $(HOME_DIR))/dagster \
		$(if $(DG),$(DG) dev,$(BIN)/dagster dev -w workspace.yaml)

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .hypothesis
