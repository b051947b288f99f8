# hmb-batch: one Makefile for people and CI.  `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_SIZES ?= 10000000,50000000
BENCH_MEMORY_LIMIT ?= 1GiB
BENCH_NIGHTLY_MEMBERS ?= 2000000
BENCH_HUGE ?= 200000000

.DEFAULT_GOAL := help
SPARK_STAMP := $(VENV)/.installed-spark
.PHONY: help install browser java demo test test-slow test-spark check lint format typecheck clean sample-data \
	bench bench-sweep screenshot

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install hmb-batch with its test and lint tools

demo: $(STAMP) ## install, then create a ledger and run two nightly batches of sample_data/ on it (out/demo)
	rm -rf out/demo
	cd sample_data && ../$(BIN)/hmb-batch ledger init ../out/demo/ledger.duckdb
	cd sample_data && ../$(BIN)/hmb-batch adjudicate nightly/01/settlements.parquet \
		--fees nightly/01/fees.parquet --out ../out/demo/night-01
	cd sample_data && ../$(BIN)/hmb-batch adjudicate nightly/02/settlements.parquet \
		--fees nightly/02/fees.parquet --out ../out/demo/night-02
	cd sample_data && ../$(BIN)/hmb-batch ledger status
	cd sample_data && ../$(BIN)/hmb-batch report --year 2022 --out ../out/demo/year-2022
	@echo "report of the last night: out/demo/night-02/report.html (report.md and" \
		"reconciliation.json beside it); year to date: out/demo/year-2022/report.html"

browser: ## install chromium and a CJK font where missing (for the HTML report test)
	scripts/ensure-browser

test: $(STAMP) browser ## install, then run the tests (slow ones excluded)
	$(BIN)/python -m pytest -q

$(SPARK_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,spark]'
	@touch $(SPARK_STAMP)

java: ## install Java 17 where missing (for the Spark engine and make test-spark)
	scripts/ensure-java

# the Spark tests on local[2]: pyspark and pandas into .venv, Java 17 where missing; workers run
# the venv's interpreter (PYSPARK_PYTHON), Java from what ensure-java found (JAVA_HOME)
test-spark: $(SPARK_STAMP) ## install pyspark and Java 17, then run the Spark tests (pytest -m spark)
	@java_home="$$(scripts/ensure-java | sed -n 's/^JAVA_HOME=//p')"; \
	if [ -n "$$java_home" ]; then export JAVA_HOME="$$java_home"; fi; \
	PYSPARK_PYTHON="$(abspath $(BIN))/python" PYSPARK_DRIVER_PYTHON="$(abspath $(BIN))/python" \
		$(BIN)/python -m pytest -q -m spark

test-slow: $(STAMP) ## run only the slow tests
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP) ## apply ruff formatting and safe fixes
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

typecheck: $(STAMP) ## mypy (strict) on the package
	$(BIN)/mypy

check: lint typecheck test ## lint, types and tests

bench: $(STAMP) ## benchmarks against the read floor and a DuckDB SQL baseline -> BENCHMARKS.md
	$(BIN)/python benchmarks/run.py --sizes $(BENCH_SIZES) --repeat 3 --repeat-large 1 \
		--memory-limit $(BENCH_MEMORY_LIMIT) --huge $(BENCH_HUGE) \
		--nightly-members $(BENCH_NIGHTLY_MEMBERS)
	$(BIN)/python benchmarks/sweep.py --lines 10000000 --values 10 \
		--memory-limit $(BENCH_MEMORY_LIMIT)

bench-sweep: $(STAMP) ## a 10-value sweep against one adjudicate of the 10M-line year (Markdown)
	$(BIN)/python benchmarks/sweep.py --lines 10000000 --values 10 \
		--memory-limit $(BENCH_MEMORY_LIMIT)

screenshot: demo browser ## docs/report-sample.png from the demo's report
	$(BIN)/python scripts/screenshot-report out/demo/night-02/report.html docs/report-sample.png

sample-data: $(STAMP) ## regenerate sample_data/ (deterministic)
	$(BIN)/hmb-batch generate --members 2000 --year 2022 --seed 20220101 --out sample_data --nights 2

clean: ## remove the virtual environment and outputs
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
