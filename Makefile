# haqa: the two commands a user needs are `make deploy` and `make test`.
# Each creates .venv when it is missing and installs haqa with what it needs first: a deploy needs haqa
# alone; the tests also need the test and embedded extras (the embedded one compiles llama-cpp-python).

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TARGET  ?= local
RECIPE  ?= smollm2-135m
JOBS    ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)
STAMP   := $(VENV)/.haqa-installed
DEPLOY_STAMP := $(VENV)/.haqa-deploy-installed
PYTEST_ARGS ?=

# llama-cpp-python (the embedded extra) compiles llama.cpp while it installs: use every core for that too.
export CMAKE_BUILD_PARALLEL_LEVEL := $(JOBS)

# GCC before 13 drops the AMX tile shapes in _tile_loadconfig, so llama.cpp's AMX kernels die with SIGILL
# (haqa/toolchain/build.py says more; haqa's own llama.cpp builds leave AMX out the same way). On a CPU
# with AMX and such a compiler, llama-cpp-python is compiled without AMX, never from pip's wheel cache.
NO_AMX    := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
GCC_MAJOR := $(shell c++ --version 2>/dev/null | grep -q 'Free Software Foundation' && c++ -dumpversion 2>/dev/null | cut -d. -f1)
AMX_CPU   := $(shell grep -qwE 'amx_tile|amx_int8' /proc/cpuinfo 2>/dev/null && echo yes)
LLAMA_CPP_BUILD_ENV := $(if $(and $(AMX_CPU),$(GCC_MAJOR)),$(shell [ $(GCC_MAJOR) -lt 13 ] && echo 'CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" PIP_NO_CACHE_DIR=1'))
# The wheel compiled that way is kept in haqa's cache, keyed by the flags, the compiler and the CPU, so the
# next install (a clean clone, CI) takes it instead of compiling llama.cpp again (about 10 minutes here).
LLAMA_CPP_PYTHON := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
HAQA_CACHE := $(or $(HAQA_HOME),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/haqa)
WHEEL_KEY  := $(shell (echo '$(LLAMA_CPP_BUILD_ENV)'; c++ --version 2>/dev/null | head -n 1; grep -m 1 '^flags' /proc/cpuinfo 2>/dev/null) | sha256sum | cut -c1-16)
WHEELHOUSE := $(HAQA_CACHE)/wheels/llama-cpp-python-$(WHEEL_KEY)

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
ifneq ($(LLAMA_CPP_BUILD_ENV),)
	@ls '$(WHEELHOUSE)'/llama_cpp_python-$(LLAMA_CPP_PYTHON)-*.whl >/dev/null 2>&1 || \
	  $(LLAMA_CPP_BUILD_ENV) $(BIN)/python -m pip wheel --no-deps --wheel-dir '$(WHEELHOUSE)' 'llama-cpp-python==$(LLAMA_CPP_PYTHON)'
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

test: prepare
	$(BIN)/python -m pytest --durations=20 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow' $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: prepare
	$(BIN)/haqa bench all --out docs/BENCHMARKS.md

bench-quick: prepare
	$(BIN)/haqa bench all --quick --out /tmp/haqa-bench-quick.md --data-dir /tmp/haqa-bench-quick

clean:
	rm -rf $(VENV) dist
