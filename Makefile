# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
VENV ?= .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: install demo smoke test lint format bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: install
	$(BIN)/matloop run configs/demo.yaml --workdir runs/demo

smoke: install
	$(BIN)/matloop run configs/smoke.yaml --workdir runs/smoke

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/vulture

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .
