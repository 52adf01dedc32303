# The two commands of the Quickstart: `make dev` runs the whole service on embedded defaults,
# `make test` runs the full suite (lint, types, tests against real Postgres, Redis and processes).
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: dev test lint pytest bench clean fuzz-long drill soak

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

dev: $(BIN)/.installed
	$(BIN)/switchyard dev

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy switchyard

pytest: $(BIN)/.installed
	scripts/ensure-services.sh
	$(BIN)/python -m pytest -q

test: lint pytest

bench: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[dev,bench]'
	scripts/ensure-services.sh
	$(BIN)/python -m bench.run

# The chaos drill (>= 5,000 objects, >= 30 faults against a private Postgres and Redis) and the 10-minute leak
# soak; DRILL_ARGS / SOAK_ARGS pass options (`python -m bench.drill --help`).
drill: $(BIN)/.installed
	$(BIN)/python -m bench.drill --objects 5000 --faults 30 $(DRILL_ARGS)

soak: $(BIN)/.installed
	$(BIN)/python -m bench.drill --soak 600 $(SOAK_ARGS)

# The long Schemathesis run (tests/test_fuzz.py; CI runs a bounded one): examples per operation and the time
# budget in seconds, both overridable from the environment. Part of `make drill`.
fuzz-long: $(BIN)/.installed
	scripts/ensure-services.sh
	SWITCHYARD_FUZZ_EXAMPLES=$${SWITCHYARD_FUZZ_EXAMPLES:-100} SWITCHYARD_FUZZ_SECONDS=$${SWITCHYARD_FUZZ_SECONDS:-1200} \
		$(BIN)/python -m pytest -q -s -p no:cacheprovider --timeout=0 tests/test_fuzz.py

drill: fuzz-long

clean:
	rm -rf $(VENV) .switchyard .pytest_cache .mypy_cache .ruff_cache
