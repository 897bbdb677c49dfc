# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
VENV ?= .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: install demo smoke test test-fast durations docs lint format bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: install
	$(BIN)/matloop run configs/demo.yaml --workdir runs/demo

smoke: install
	$(BIN)/matloop run configs/smoke.yaml --workdir runs/smoke

test: install
	$(BIN)/python -m pytest -q --durations=30

# Everyday work: every test not marked slow, nor slower than tests/conftest.py's limit in tests/durations.json.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

# Re-time the whole suite and rewrite tests/durations.json (what test-fast leaves out).
durations: install
	$(BIN)/python -m pytest -q --durations=0 | tee test-durations.log
	$(BIN)/python scripts/test_durations.py test-durations.log

docs: install
	$(BIN)/mkdocs build --strict -d site

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/vulture

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .
