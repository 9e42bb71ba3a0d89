# Two commands for a newcomer: `make serve` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
RUNTIME := $(VENV)/.installed-runtime

.PHONY: install serve test check lint typecheck bench-pricing bench-reports bench-ledger bench-batch bench-replay bench-storage soak crash clean

# serve needs the service alone; tests and checks add the dev extra (pytest, playwright, the
# real litellm proxy for the plug-in's tests, ...).
$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(RUNTIME)
	$(BIN)/usage-ledger serve $(ARGS)

test: $(STAMP)
	sh scripts/ensure-chromium
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check app tests bench usage_ledger
	$(BIN)/ruff format --check app tests bench usage_ledger

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck

# Long runs, not part of `make test`: each prints its figures (docs/benchmarks.md).
bench-reports: $(STAMP)
	$(BIN)/python bench/reports.py $(ARGS)

bench-ledger: $(STAMP)
	$(BIN)/pip install --quiet py-spy
	$(BIN)/python bench/ledger.py $(ARGS)

bench-batch: $(STAMP)
	$(BIN)/python bench/usage_batch.py $(ARGS)

# Kills the server and restarts a private PostgreSQL of its own mid-load (docs/reliability.md).
crash: $(STAMP)
	$(BIN)/pytest -q -m crash tests/crash $(PYTEST_ARGS)

# Bytes per event, request and rollup row (docs/scaling.md): a fresh load through the service
# in its own database (ul_scaling_storage). ARGS="measure --database NAME" only reads NAME.
bench-storage: $(STAMP)
	$(BIN)/python bench/storage.py $(or $(ARGS),load)

# 10M events in ul_bench_replay (ARGS=--reuse to time the replay again without loading).
bench-replay: $(STAMP)
	$(BIN)/python bench/replay.py $(ARGS)

# Mixed traffic for 10 minutes (ARGS="--seconds 60 --rate 20"), then the balance check
# (docs/reliability.md, "Soak"); exits 1 if the books do not balance.
soak: $(STAMP)
	$(BIN)/python bench/soak.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Benchmarks: litellm lives only in the bench virtualenv, never in the service's.
.venv-bench/bin/python:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet "litellm==1.106.2" -e .

bench-pricing: .venv-bench/bin/python
	.venv-bench/bin/python bench/pricing.py --seconds 3
