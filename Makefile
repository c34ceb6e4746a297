# haqa: the two commands a user needs are `make deploy` and `make test`.
# Each creates .venv when it is missing and installs haqa with what it needs first: a deploy needs haqa
# alone; the tests also need the test and embedded extras (llama-cpp-python's Python code, which loads haqa's
# own llama.cpp build).

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TARGET  ?= local
RECIPE  ?= smollm2-135m
JOBS    ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)
STAMP   := $(VENV)/.haqa-installed
DEPLOY_STAMP := $(VENV)/.haqa-deploy-installed
PYTEST_ARGS ?=

# llama-cpp-python (the embedded extra) is installed as its Python code only, on Linux: its own llama.cpp
# would compile for 5 to 10 minutes, and its bindings load the library linked from haqa's own build instead
# (haqa/toolchain/bindings.py). That wheel is built once into haqa's cache, never into pip's, where a plain
# `pip install llama-cpp-python` elsewhere would find a wheel without a library. Elsewhere (macOS) pip
# builds llama-cpp-python whole.
LLAMA_CPP_PYTHON := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
HAQA_CACHE := $(or $(HAQA_HOME),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/haqa)
BINDINGS_ONLY := $(filter Linux,$(shell uname -s 2>/dev/null))
WHEELHOUSE := $(HAQA_CACHE)/wheels/llama-cpp-python-$(LLAMA_CPP_PYTHON)-python-only

.PHONY: help install install-test deploy prepare test test-fast lint bench bench-quick clean

help:
	@echo "make deploy [TARGET=local] [RECIPE=smollm2-135m]   build, quantize, measure and bundle"
	@echo "make test                                          the whole test suite (what CI runs)"
	@echo "make test-fast                                     only the fast tests"
	@echo "make lint                                          ruff (settings in pyproject.toml)"
	@echo "make bench                                         regenerate docs/BENCHMARKS.md on this machine"
	@echo "make clean                                         remove .venv and dist/ (not haqa's cache)"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# haqa with the test and embedded extras (it also satisfies a deploy).
$(STAMP): pyproject.toml | $(VENV)/bin/python
ifneq ($(BINDINGS_ONLY),)
	@ls '$(WHEELHOUSE)'/llama_cpp_python-$(LLAMA_CPP_PYTHON)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS='-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF' PIP_NO_CACHE_DIR=1 \
	  $(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir '$(WHEELHOUSE)' 'llama-cpp-python==$(LLAMA_CPP_PYTHON)'
	$(BIN)/python -m pip install --find-links '$(WHEELHOUSE)' -e '.[test,embedded]'
else
	$(BIN)/python -m pip install -e '.[test,embedded]'
endif
	@touch $(STAMP) $(DEPLOY_STAMP)

# haqa alone: the llama.cpp tools it builds come from a downloaded source, nothing is compiled here.
$(DEPLOY_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -e .
	@touch $(DEPLOY_STAMP)

install: $(DEPLOY_STAMP)

install-test: $(STAMP)

deploy: $(DEPLOY_STAMP)
	$(BIN)/haqa deploy --target '$(TARGET)' --recipe '$(RECIPE)' --jobs $(JOBS)

# What the slow tests need, done once with visible progress: the default model and the local toolchain.
prepare: $(STAMP)
	$(BIN)/haqa recipes fetch smollm2-135m
	$(BIN)/haqa toolchain build --target local --jobs $(JOBS)

# The fast tests on every core at once; then the slow ones one at a time: they measure llama.cpp, and their
# figures need the machine to themselves.
test: prepare
	$(BIN)/python -m pytest -m 'not slow' -n $(JOBS) $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m slow --durations=20 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow' -n $(JOBS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: prepare
	$(BIN)/haqa bench all --out docs/BENCHMARKS.md

bench-quick: prepare
	$(BIN)/haqa bench all --quick --out /tmp/haqa-bench-quick.md --data-dir /tmp/haqa-bench-quick

clean:
	rm -rf $(VENV) dist
