# The two commands a newcomer needs: `make demo` and `make test`. Everything they need
# (uv, Python packages, redis-server, livekit-server, the SIP simulator) is installed
# on first use; later runs reuse it.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv from PATH, else a private copy installed from PyPI into .cache/tools.
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.cache/tools/uv/bin/uv)
RUN := $(UV) run --frozen
PYTEST_ARGS ?=
# Debian packages the tests use: redis for the stack; prometheus (with promtool) for
# the rules, dashboards and metrics tests; amtool for the alertmanager config; jq and
# lnav for the log-search tests.
APT_PACKAGES := redis-server prometheus prometheus-alertmanager jq lnav
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: help demo replay-demo test test-unit lint fmt build samples dashboards docs bench clean system-packages

help:
	@echo "make demo       the main job: a local stack, the monitor, real calls, live output"
	@echo "make replay-demo  replay the shipped journal of recorded livekit-sip calls"
	@echo "make test       lint, unit tests with coverage, integration tests on a real stack"
	@echo "make test-unit  only the unit tests (no LiveKit needed)"
	@echo "make lint       ruff check, ruff format --check, mypy --strict"
	@echo "make fmt        format the code"
	@echo "make build      install redis-server, build livekit-server, the SIP simulator and helm"
	@echo "make samples    regenerate samples/ from tests/fixtures/traces"
	@echo "make dashboards regenerate dashboards/*.json from dashboards/*.py"
	@echo "make docs       redraw the state diagram of docs/outcomes.md from the machine's tables"
	@echo "make bench      benchmarks on a local stack (BENCH_ARGS=--quick: a few minutes)"
	@echo "make clean      remove old stack run folders and caches"

$(CURDIR)/.cache/tools/uv/bin/uv:
	@echo ">> installing uv from PyPI into .cache/tools/uv"
	python3 -m pip install --quiet --disable-pip-version-check --target .cache/tools/uv uv

.venv/.synced: $(UV) pyproject.toml uv.lock
	@echo ">> installing Python packages (uv sync)"
	$(UV) sync --frozen
	@touch $@

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo ">> installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: .venv/.synced
	$(RUN) python -m demo

replay-demo: .venv/.synced
	$(RUN) call-monitor replay samples/traces.journal.jsonl

lint: .venv/.synced
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy

fmt: .venv/.synced
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

build: .venv/.synced
	$(RUN) python -m stack build

# pytest exits 5 when it collected no tests: here that means a broken test tree, not
# success, so it is reported as a failure of its own.
define pytest
	$(RUN) $(1); status=$$?; \
	if [ $$status -eq 5 ]; then echo "!! pytest collected no tests: $(1)" >&2; exit 1; fi; \
	exit $$status
endef

test-unit: .venv/.synced system-packages
	@$(call pytest,coverage run -m pytest tests/unit $(PYTEST_ARGS))
	$(RUN) coverage report --include='monitor/core/machine.py,monitor/core/outcome.py' --fail-under=100 --show-missing

test: lint test-unit build
	@$(call pytest,pytest tests/integration $(PYTEST_ARGS))

samples: .venv/.synced
	$(RUN) python -m tests.trace_journal

dashboards: .venv/.synced
	$(RUN) python -m dashboards.generate

docs: .venv/.synced
	$(RUN) python docs/generate.py

# Benchmarks, not tests: bench/README.md says what each number means; results are
# written to bench/results/ and bench/RESULTS.md.
BENCH_ARGS ?=
bench: .venv/.synced
	$(RUN) python -m bench $(BENCH_ARGS)

clean:
	rm -rf .cache/stack .pytest_cache .mypy_cache .ruff_cache .coverage
