# Thin front door: the logic lives in Python and pytest.
VENV    := .venv
PY      := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
# no test may be skipped for a missing tool: CI installs them all
export IVHW_REQUIRE_TOOLS ?= 1

.PHONY: setup test demo lint bench clean

setup:
	@./.ci/setup

test: setup
	$(PY) -m pytest -n auto $(PYTEST_ARGS)

demo: setup
	$(PY) -m ivhw.cosim.demo $(DEMO_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf build sim_build .pytest_cache
